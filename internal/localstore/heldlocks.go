package localstore

import (
	"sync"

	"ferry/nix/storepath"
)

// heldLocks are the store paths whose path locks ("<path>.lock") are held
// on this process's behalf by another process, which waits for it: Nix's
// LocalStore::locksHeld (src/libstore/local-store.hh@2.8.0), which
// build-remote fills with the outputs it copies back, because the nix
// process that ran it holds their locks while the hook runs
// (src/build-remote/build-remote.cc@2.8.0). Taking them again would wait
// for ever.
type heldLocks struct {
	mu    sync.Mutex
	paths map[string]int // physical paths, with how many holders vouch for each
}

// filter leaves out of real the physical paths whose locks are held for
// us.
func (h *heldLocks) filter(real []string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.paths) == 0 {
		return real
	}
	out := make([]string, 0, len(real))
	for _, p := range real {
		if h.paths[p] == 0 {
			out = append(out, p)
		}
	}
	return out
}

// LocksHeld tells the store that the path locks of paths are held on its
// behalf by another process (Nix's locksHeld), or by its caller: adding
// them takes no path lock until release is called, which the holder does
// before it lets the locks go. A build hook calls it with the outputs it
// copies back, which the nix process waiting for it has locked. Only the
// lock holder's word makes this safe; nothing else may add those paths
// meanwhile.
func (s *Store) LocksHeld(paths ...storepath.Path) (release func()) {
	s.held.mu.Lock()
	defer s.held.mu.Unlock()
	if s.held.paths == nil {
		s.held.paths = map[string]int{}
	}
	real := make([]string, len(paths))
	for i, p := range paths {
		real[i] = s.RealPath(p)
		s.held.paths[real[i]]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.held.mu.Lock()
			defer s.held.mu.Unlock()
			for _, p := range real {
				if s.held.paths[p]--; s.held.paths[p] <= 0 {
					delete(s.held.paths, p)
				}
			}
		})
	}
}
