// Package gc owns garbage collection of a local store (docs/store.md
// §6.3-§6.7): finding roots (permanent roots under gcroots and profiles,
// runtime roots from /proc, temp roots of live processes), the gc-socket
// server of Nix 2.8 that lets processes add temp roots while a collection
// runs, and deletion.
//
// A collection is a pure plan followed by an execute step:
//
//	c, err := gc.Plan(ctx, s, &gc.Options{})  // takes gc.lock, serves the socket
//	res, err := gc.Execute(ctx, c)            // deletes, then releases
//
// Plan holds the GC lock from before it reads the temp roots until
// Execute or Close returns, so the plan stays true except for the temp
// roots that arrive through the socket meanwhile; Execute re-checks those
// for every path just before it invalidates the path and deletes its
// files, and never deletes a path that another valid path still refers to.
// README.md states the invariants and why they close the race of Nix 2.8.
package gc
