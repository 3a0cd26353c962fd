// Package serve owns the serve protocol, the protocol `nix-store --serve`
// speaks on stdin/stdout (docs/protocol.md; Nix 2.8.0's
// src/nix-store/nix-store.cc opServe, src/libstore/serve-protocol.hh and
// src/libstore/legacy-ssh-store.cc).
//
// It has two layers:
//
//   - codecs: one Read and one Write function per protocol message (the
//     handshake, each command's request and reply, build settings, the
//     BasicDerivation, BuildResult and path-info records), shared by the
//     server here and by clients (ferry copy, internal/sshstore). Every codec
//     takes the protocol version it must gate fields on, and bounds every
//     length and count it reads before allocating.
//   - Server: one protocol session over an io.Reader and io.Writer, on top of
//     a Backend (a store.Store that can also add temp roots, compute closures
//     and build; internal/localserve makes one of the local store, and
//     NewRelayBackend one of any other store, such as an ssh store, so that
//     a session relays to it: docs/protocol.md §12).
//   - Client: the other end, with every call taking a context. Its bulk
//     operations pipeline (docs/protocol.md §11): AddToStoreNars,
//     ImportPaths and DumpStorePaths send all their requests without waiting
//     while a reader collects the replies, so a copy costs one round trip.
//
// The package depends on nothing but nix/* and store (internal/layering
// checks it): what a server needs of its store are the capability
// interfaces of package store.
//
// # Sessions, temp roots and store handles
//
// Nix runs one `nix-store --serve` process per ssh connection, and a temp root
// lives until that process exits. ferry keeps the same model: the command that
// runs a session opens its store for that session only and closes it when
// Serve returns, and closing the store handle releases every temp root the
// session added (store.TempRooter). Server itself never releases roots; it
// relies on the handle's lifetime.
//
// # Copies: acknowledged when verified, committed before the last reply
//
// Nix 2.8's clients copy with one QueryValidPaths of all the paths, then one
// AddToStoreNar per missing path, each waiting for its reply. ferry makes
// every path durable before it is valid, and a file system sync per path
// would dominate the copy of small paths, so with a Backend that is a
// Batcher (the local store) a path the last QueryValidPaths reported missing
// is verified, staged and acknowledged at once. Staged paths are committed
// (one sync, one transaction per 256 paths) in the background every
// AsyncPaths paths or AsyncBytes bytes, and in full before the reply to the
// last announced path, before any other command, and whenever the session
// ends. So the client's copy succeeds only once all of it is durable and
// valid; if the server dies first, the client sees the connection fail, and
// what was staged is left as temporaries that the next write or GC removes.
//
// # Errors
//
// Like Nix, the protocol has no in-band error channel except for build results:
// any error ends the session. Serve returns it, and the caller prints
// "error: <msg>" on stderr and exits 1, writing nothing more on stdout. End of
// input exactly at a command boundary is a clean end (Serve returns nil).
package serve
