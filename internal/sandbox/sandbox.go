package sandbox

import (
	"errors"
	"io"
)

// Spec describes one builder run.
type Spec struct {
	// Sandbox runs the builder in namespaces with a private root
	// filesystem. When false the builder runs directly on the host, in the
	// host build directory, and StoreDir must equal RealStoreDir.
	Sandbox bool

	// Builder is the program to exec, as a path inside the sandbox (or on
	// the host when not sandboxed). It is exec'd as is, without a PATH
	// search; argv[0] is its base name (docs/store.md §8.1).
	Builder string
	// Args are the builder's arguments after argv[0].
	Args []string
	// Env is the builder's whole environment, passed exactly as given.
	Env []string

	// BuildDir is the build directory on the host. It must exist.
	BuildDir string
	// Dir is where BuildDir appears inside the sandbox and the builder's
	// working directory there. Empty means "/build". Ignored when not
	// sandboxed: the builder then runs in BuildDir.
	Dir string

	// StoreDir is the logical store directory, "/nix/store" for example.
	StoreDir string
	// RealStoreDir is where the store's files are on the host. Empty means
	// StoreDir.
	RealStoreDir string
	// Name names the chroot directory, <RealStoreDir>/<Name>.chroot, as
	// Nix names it after the derivation ("<hash>-foo.drv"). An existing
	// directory of that name is removed first. Empty means a fresh
	// temporary name.
	Name string

	// Inputs are the logical store paths the builder may read: the input
	// closure, computed by the caller, including the closures of store
	// paths among the Paths sources. Directories and regular files are
	// bind-mounted read-only from RealStoreDir; symlinks are copied.
	Inputs []string
	// Outputs are the logical store paths the builder may create. In the
	// sandbox it creates them in the chroot's store directory; Wait moves
	// each one that exists to RealStoreDir, whatever the exit status.
	Outputs []string

	// Paths are Nix's sandbox-paths: target path inside the sandbox to
	// source path on the host. A source ending in "?" is optional: a
	// missing source is skipped instead of failing the build. Sources are
	// bind-mounted read-only. A "/dev" target replaces the minimal /dev.
	Paths map[string]string

	// Network keeps the host's network namespace, as Nix does for
	// fixed-output derivations. It also bind-mounts the host's
	// /etc/resolv.conf, /etc/services and /etc/hosts and writes
	// /etc/nsswitch.conf. When false the sandbox has only a loopback
	// interface.
	Network bool

	// UID and GID are a build user (Nix's build-users-group) for callers
	// running as root: the builder runs as them on the host. In a sandbox
	// with a user namespace they are what uid 1000 and gid 100 map to, and
	// the chroot is made accessible to GID. Zero means the caller's own ids.
	// The caller owns BuildDir's ownership.
	UID, GID int

	// Stdout receives the builder's stdout and stderr, merged, until
	// every process holding them has closed them. Nil discards them. If a
	// Write fails, the builder is killed and Wait reports the error.
	Stdout io.Writer
}

// ErrSandboxRequired is returned when an unsandboxed run is asked for a
// store whose physical directory differs from its logical one: builders
// would write their outputs at the logical path.
var ErrSandboxRequired = errors.New("a sandbox is required when the real store directory differs from the store directory")

// Nix's /etc files for the sandbox (docs/store.md §8.3).
const (
	passwdFile = "root:x:0:0:Nix build user:/build:/noshell\n" +
		"nixbld:x:1000:100:Nix build user:/build:/noshell\n" +
		"nobody:x:65534:65534:Nobody:/:/noshell\n"
	groupFile     = "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
	hostsFile     = "127.0.0.1 localhost\n::1 localhost\n"
	nsswitchFile  = "hosts: files dns\nservices: files\n"
	sandboxUID    = 1000
	sandboxGID    = 100
	defaultBuildD = "/build"
)
