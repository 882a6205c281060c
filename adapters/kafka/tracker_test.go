package kafka

import "testing"

func TestOffsetTrackerCommitsOnlyContiguousAckedOffsets(t *testing.T) {
	type step struct {
		deliver []int64
		ack     []int64
		want    int64 // committable after the step
	}
	cases := []struct {
		name  string
		start int64
		steps []step
	}{
		{"InOrderAcksAdvanceOneByOne", 0, []step{
			{deliver: []int64{0, 1, 2}, want: 0},
			{ack: []int64{0}, want: 1},
			{ack: []int64{1}, want: 2},
			{ack: []int64{2}, want: 3},
		}},
		{"GapHoldsCommitUntilFilled", 0, []step{
			{deliver: []int64{0, 1, 2, 3, 4}, ack: []int64{0, 1, 3, 4}, want: 2},
			{ack: []int64{2}, want: 5},
		}},
		{"ReverseAcksCommitOnlyAtTheEnd", 10, []step{
			{deliver: []int64{10, 11, 12, 13}, ack: []int64{13, 12, 11}, want: 10},
			{ack: []int64{10}, want: 14},
		}},
		{"SparseOffsetsFromCompactionOrTransactions", 100, []step{
			{deliver: []int64{100, 105, 107}, ack: []int64{105}, want: 100},
			{ack: []int64{100}, want: 106},
			{ack: []int64{107}, want: 108},
		}},
		{"DuplicateAndUnknownAcksChangeNothing", 0, []step{
			{deliver: []int64{0, 1}, ack: []int64{1, 1, 7, -1}, want: 0},
			{ack: []int64{0, 0}, want: 2},
		}},
		{"NothingDeliveredCommitsTheStart", 42, []step{{want: 42}}},
		{"LaterDeliveriesAfterAFullAck", 0, []step{
			{deliver: []int64{0}, ack: []int64{0}, want: 1},
			{deliver: []int64{1, 2}, ack: []int64{2}, want: 1},
			{ack: []int64{1}, want: 3},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newOffsetTracker(tc.start)
			for i, s := range tc.steps {
				for _, o := range s.deliver {
					if !tr.delivered(o) {
						t.Fatalf("step %d: delivered(%d) refused", i, o)
					}
				}
				for _, o := range s.ack {
					tr.ack(o)
				}
				if got := tr.committable(); got != s.want {
					t.Fatalf("step %d: committable = %d, want %d", i, got, s.want)
				}
			}
		})
	}
}

func TestOffsetTrackerRefusesRepeatedOrOlderDeliveries(t *testing.T) {
	tr := newOffsetTracker(5)
	if tr.delivered(4) {
		t.Error("delivered(4) below the start offset 5 was accepted")
	}
	if !tr.delivered(5) || !tr.delivered(6) {
		t.Fatal("delivered(5), delivered(6) refused")
	}
	if tr.delivered(6) || tr.delivered(5) {
		t.Error("a repeated delivery was accepted")
	}
	if got := tr.outstanding(); got != 2 {
		t.Errorf("outstanding = %d, want 2", got)
	}
	tr.ack(5)
	tr.ack(6)
	if got := tr.outstanding(); got != 0 {
		t.Errorf("outstanding after acking all = %d, want 0", got)
	}
}

func TestOffsetTrackerNeverMovesBackwards(t *testing.T) {
	tr := newOffsetTracker(0)
	const n = 10000
	for o := int64(0); o < n; o++ {
		tr.delivered(o)
	}
	// Ack odd offsets first, then even ones, in a scrambled order; the
	// commit may only grow, and only to one past a fully acked prefix.
	last := tr.committable()
	order := make([]int64, 0, n)
	for o := int64(1); o < n; o += 2 {
		order = append(order, o)
	}
	for o := int64(n - 2); o >= 0; o -= 2 {
		order = append(order, o)
	}
	acked := make([]bool, n)
	for _, o := range order {
		tr.ack(o)
		acked[o] = true
		c := tr.committable()
		if c < last {
			t.Fatalf("commit moved back from %d to %d", last, c)
		}
		for i := int64(0); i < c; i++ {
			if !acked[i] {
				t.Fatalf("commit %d passes unacked offset %d", c, i)
			}
		}
		last = c
	}
	if last != n {
		t.Fatalf("final commit %d, want %d", last, n)
	}
}
