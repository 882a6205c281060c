package middleware

import "hash/maphash"

// keyTable maps keys to the memory dedup store's entries: open addressing
// with linear probing, at most half full. Each slot holds the key's hash
// next to the entry, so a lookup that misses (the common case: a new
// message ID) reads one slot run and never the keys, and growing moves
// slots by their hash without reading a key. A Go map of this size takes
// several dependent cache misses per lookup and re-hashes every key as it
// grows. Not safe for concurrent use.
type keyTable struct {
	seed  maphash.Seed
	slots []tableSlot // len is a power of two, or 0
	n     int
}

type tableSlot struct {
	h uint64 // 0: empty
	e *dedupEntry
}

func newKeyTable() keyTable { return keyTable{seed: maphash.MakeSeed()} }

// hash returns key's hash, never 0.
func (t *keyTable) hash(key string) uint64 { return maphash.String(t.seed, key) | 1 }

// find returns key's entry, or nil and the slot where to insert it.
func (t *keyTable) find(key string, h uint64) (*dedupEntry, int) {
	if len(t.slots) == 0 {
		return nil, -1
	}
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.h == 0 {
			return nil, i
		}
		if s.h == h && s.e.key == key {
			return s.e, i
		}
	}
}

func (t *keyTable) get(key string) *dedupEntry {
	e, _ := t.find(key, t.hash(key))
	return e
}

// insert adds e (e.h set, e.key absent) at slot i as returned by find.
func (t *keyTable) insert(e *dedupEntry, i int) {
	if i < 0 || 2*(t.n+1) > len(t.slots) {
		t.grow()
		_, i = t.find(e.key, e.h)
	}
	t.slots[i] = tableSlot{h: e.h, e: e}
	t.n++
}

func (t *keyTable) grow() {
	old := t.slots
	t.slots = make([]tableSlot, max(64, 2*len(old)))
	mask := len(t.slots) - 1
	for _, s := range old {
		if s.h == 0 {
			continue
		}
		i := int(s.h) & mask
		for t.slots[i].h != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// remove deletes e, which must be in the table, shifting later slots of
// its probe run back so that no lookup stops short (no tombstones).
func (t *keyTable) remove(e *dedupEntry) {
	mask := len(t.slots) - 1
	i := int(e.h) & mask
	for t.slots[i].e != e {
		i = (i + 1) & mask
	}
	t.n--
	for j := i; ; {
		j = (j + 1) & mask
		if t.slots[j].h == 0 {
			t.slots[i] = tableSlot{}
			return
		}
		// The slot at j may move back to i unless its home slot lies
		// cyclically in (i, j].
		home := int(t.slots[j].h) & mask
		if (i < j && i < home && home <= j) || (i > j && (i < home || home <= j)) {
			continue
		}
		t.slots[i] = t.slots[j]
		i = j
	}
}

// each calls f with every entry; f must not change the table.
func (t *keyTable) each(f func(*dedupEntry)) {
	for _, s := range t.slots {
		if s.h != 0 {
			f(s.e)
		}
	}
}
