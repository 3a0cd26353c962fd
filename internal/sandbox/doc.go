// Package sandbox runs one builder process the way Nix 2.8 runs it: either
// directly on the host in its own session, or inside a Linux sandbox made of
// user, mount, PID, IPC, UTS and (unless the build may use the network)
// network namespaces with a private root filesystem
// (docs/store.md §8.1 and §8.3).
//
// The package owns the process and its root filesystem, nothing else: the
// caller (internal/build) chooses the environment, computes the input
// closure, deletes stale outputs before the build, and checks and registers
// the outputs afterwards.
//
// # Re-exec
//
// Namespaces and mounts are set up by a small init that runs in the new
// namespaces before the builder is exec'd. The init is the running program
// itself, re-executed through /proc/self/exe with a sentinel environment
// variable, so every program that starts builders must call [Init] first
// thing in main (and a test binary in TestMain):
//
//	func main() {
//		sandbox.Init() // never returns in a sandbox init
//		...
//	}
//
// The init does its setup (in both modes: umask 022, RLIMIT_CORE 0,
// ADDR_NO_RANDOMIZE, no_new_privs and Nix's seccomp filter refusing setuid
// and setgid modes and extended attributes, as in docs/store.md §8.1), then
// execs the builder, so the builder replaces it:
// inside the sandbox the builder is PID 1, as in Nix, and when it exits the
// kernel kills everything left in its PID namespace.
//
// # The sandbox
//
// The root filesystem is a directory <RealStoreDir>/<Name>.chroot on the host
// (on the store's filesystem, so outputs can be renamed into the store). It
// holds the input paths bind-mounted read-only at the logical store
// directory, the build directory at /build, a new /proc, a minimal /dev,
// /etc/passwd, /etc/group and /etc/hosts as Nix writes them, /tmp, and the
// sandbox paths (for example /bin/sh=/bin/busybox), also read-only. With a
// user namespace the builder runs as uid 1000 and gid 100 ("nixbld"), mapped
// to the caller's uid and gid, and has no capabilities.
//
// Unlike Nix 2.8, every bind mount except the build directory is read-only:
// inside the user namespace the builder's uid maps to the caller's, so it
// owns the caller's files and could otherwise chmod and rewrite its inputs,
// or /bin/busybox on the host when ferry runs as root.
//
// Without a user namespace (max_user_namespaces is 0) only root can sandbox,
// and the builder runs as Spec.UID and Spec.GID, or as root if they are zero.
//
// # Output and end of build
//
// The builder's stdout and stderr are one pipe. As in Nix, the build ends when
// that pipe reaches EOF: [Process.Wait] then kills the builder's process
// group, so a builder that closes its output early is killed by SIGKILL.
// After the builder exits, [Process.Wait] renames every output the builder
// created from the chroot to <RealStoreDir>/<base> and removes the chroot.
package sandbox
