package kafka

import "sort"

// offsetTracker keeps, for one partition of one assignment, the offsets
// delivered and not yet acked, and computes the offset the group may commit:
// one past the highest offset below which every delivered message was acked.
//
// Kafka offsets are not dense (transaction markers and compaction leave
// holes), so "contiguous" means contiguous among the offsets actually
// delivered, in the order they were delivered. A nacked message stays
// pending, so it holds the commit back until it is finally acked.
//
// offsetTracker is not safe for concurrent use; its partition guards it.
type offsetTracker struct {
	// commit is the offset the group may commit: the next offset to read
	// after every delivered offset below it was acked. It never decreases.
	commit int64
	// pending are delivered offsets at or after commit, ascending, with
	// their ack state; pending[head:] is live.
	pending []pendingOffset
	head    int
	unacked int
}

type pendingOffset struct {
	offset int64
	acked  bool
}

// newOffsetTracker starts a tracker at start, the first offset this
// assignment will read (the committed offset, or the resolved start).
func newOffsetTracker(start int64) *offsetTracker {
	return &offsetTracker{commit: start}
}

// delivered records that offset was handed to the application. Offsets must
// be delivered in ascending order; a repeated or lower offset is ignored and
// reported false.
func (t *offsetTracker) delivered(offset int64) bool {
	if offset < t.commit {
		return false
	}
	if n := len(t.pending); n > t.head && t.pending[n-1].offset >= offset {
		return false
	}
	t.pending = append(t.pending, pendingOffset{offset: offset})
	t.unacked++
	return true
}

// ack marks offset as done and advances the commit offset past every
// leading acked offset. It reports whether offset was pending (false for an
// unknown or already acked offset, e.g. a duplicate ack).
func (t *offsetTracker) ack(offset int64) bool {
	live := t.pending[t.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].offset >= offset })
	if i == len(live) || live[i].offset != offset || live[i].acked {
		return false
	}
	live[i].acked = true
	t.unacked--
	for t.head < len(t.pending) && t.pending[t.head].acked {
		t.commit = t.pending[t.head].offset + 1
		t.head++
	}
	// Compact once the dead prefix dominates, keeping appends amortised O(1).
	if t.head > 0 && (t.head == len(t.pending) || t.head >= len(t.pending)/2) {
		n := copy(t.pending, t.pending[t.head:])
		t.pending = t.pending[:n]
		t.head = 0
	}
	return true
}

// committable returns the offset the group may commit now.
func (t *offsetTracker) committable() int64 { return t.commit }

// outstanding returns how many delivered offsets are not yet acked.
func (t *offsetTracker) outstanding() int { return t.unacked }
