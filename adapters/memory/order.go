package memory

import "slices"

// sortEntries orders entries by publish sequence.
func sortEntries(es []*entry) {
	slices.SortFunc(es, func(a, b *entry) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
}
