//go:build linux

package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"unsafe"
)

// The re-exec protocol between Start and Init.
const (
	initEnv      = "FERRY_SANDBOX_INIT"
	initEnvValue = "1"
	initArgv0    = "ferry-sandbox-init"
	specFD       = 3 // the JSON initSpec, read to EOF
	errFD        = 4 // close-on-exec; the init writes why it failed
	probeOK      = "ok"

	modeProbe   = "probe"
	modeDirect  = "direct"
	modeSandbox = "sandbox"
)

// Raw Linux constants the syscall package lacks.
const (
	prSetNoNewPrivs      = 38         // PR_SET_NO_NEW_PRIVS
	prCapAmbient         = 47         // PR_CAP_AMBIENT
	prCapAmbientClearAll = 4          // PR_CAP_AMBIENT_CLEAR_ALL
	addrNoRandomize      = 0x0040000  // ADDR_NO_RANDOMIZE personality flag
	personalityQuery     = 0xffffffff // personality(0xffffffff) returns the current one
	pPID                 = 1          // P_PID for waitid
	wNoWait              = 0x1000000  // WNOWAIT
	stNoSuid             = 0x2        // ST_NOSUID in statfs f_flags
	stNoDev              = 0x4        // ST_NODEV
	stNoExec             = 0x8        // ST_NOEXEC
	stNoAtime            = 0x400      // ST_NOATIME
	stNoDirAtime         = 0x800      // ST_NODIRATIME
	stRelatime           = 0x1000     // ST_RELATIME
)

// initSpec is what Start sends the init on specFD.
type initSpec struct {
	Mode    string
	Root    string      `json:",omitempty"` // chroot on the host
	Store   string      `json:",omitempty"` // logical store directory
	Mounts  []mountSpec `json:",omitempty"` // bind mounts, parents first
	Shm     bool        `json:",omitempty"` // tmpfs on /dev/shm
	Pts     bool        `json:",omitempty"` // devpts on /dev/pts
	Network bool        `json:",omitempty"` // host network: leave lo alone
	Builder string      `json:",omitempty"`
	Args    []string    `json:",omitempty"` // argv, argv[0] included
	Env     []string    `json:",omitempty"`
	Dir     string      `json:",omitempty"` // working directory of the builder
	UID     int         `json:",omitempty"` // setuid to this before exec, if not 0
	GID     int         `json:",omitempty"` // setgid to this before exec, if not 0
	Groups  bool        `json:",omitempty"` // clear supplementary groups (no user namespace)
}

type mountSpec struct {
	Source   string // host path
	Target   string // path inside the chroot
	ReadOnly bool
}

// Init turns the process into a sandbox init when it was started as one by
// this package, and then never returns: it sets up the builder's namespaces
// and filesystem and execs the builder. In any other process it returns at
// once. Programs that start builders must call it first in main, and test
// binaries first in TestMain.
func Init() {
	if os.Getenv(initEnv) != initEnvValue || len(os.Args) == 0 || os.Args[0] != initArgv0 {
		return
	}
	errPipe := os.NewFile(errFD, "sandbox-error")
	syscall.CloseOnExec(errFD)
	is, err := readSpec()
	if err == nil && is.Mode == modeProbe {
		io.WriteString(errPipe, probeOK)
		os.Exit(0)
	}
	if err == nil {
		err = runInit(is)
	}
	// runInit only returns on failure.
	io.WriteString(errPipe, err.Error())
	os.Exit(126)
}

func readSpec() (*initSpec, error) {
	f := os.NewFile(specFD, "sandbox-spec")
	defer f.Close()
	var is initSpec
	if err := json.NewDecoder(f).Decode(&is); err != nil {
		return nil, fmt.Errorf("read sandbox spec: %w", err)
	}
	return &is, nil
}

func runInit(is *initSpec) error {
	// Capabilities, no_new_privs, the seccomp filter and the personality
	// belong to a thread: set them on the one that execs the builder.
	runtime.LockOSThread()
	syscall.Umask(0o022)
	switch is.Mode {
	case modeSandbox:
		if err := setupSandbox(is); err != nil {
			return err
		}
	case modeDirect:
	default:
		return fmt.Errorf("sandbox init: unknown mode %q", is.Mode)
	}
	if err := os.Chdir(is.Dir); err != nil {
		return fmt.Errorf("change to build directory: %w", err)
	}
	if is.Groups {
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("clear supplementary groups: %w", err)
		}
	}
	if is.GID != 0 {
		if err := syscall.Setgid(is.GID); err != nil {
			return fmt.Errorf("set gid %d: %w", is.GID, err)
		}
	}
	if is.UID != 0 {
		if err := syscall.Setuid(is.UID); err != nil {
			return fmt.Errorf("set uid %d: %w", is.UID, err)
		}
	}
	// Drop the capabilities kept for setup: the builder gets none.
	prctl(prCapAmbient, prCapAmbientClearAll, 0)
	if err := prctl(prSetNoNewPrivs, 1, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	if err := installSeccomp(); err != nil {
		return err
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_CORE, &rl); err == nil {
		rl.Cur = 0
		syscall.Setrlimit(syscall.RLIMIT_CORE, &rl)
	}
	if cur, _, e := syscall.RawSyscall(syscall.SYS_PERSONALITY, personalityQuery, 0, 0); e == 0 {
		syscall.RawSyscall(syscall.SYS_PERSONALITY, cur|addrNoRandomize, 0, 0)
	}
	err := syscall.Exec(is.Builder, is.Args, is.Env)
	return fmt.Errorf("executing '%s': %w", is.Builder, err)
}

// setupSandbox makes the mounts in the new mount namespace and enters the
// chroot (docs/store.md §8.3, "Mount sequence").
func setupSandbox(is *initSpec) error {
	root := is.Root
	in := func(p string) string { return filepath.Join(root, p) }
	if err := mount("", "/", "", syscall.MS_PRIVATE|syscall.MS_REC, ""); err != nil {
		return err
	}
	if err := mount(root, root, "", syscall.MS_BIND, ""); err != nil {
		return err
	}
	store := in(is.Store)
	if err := mount(store, store, "", syscall.MS_BIND, ""); err != nil {
		return err
	}
	if err := mount("", store, "", syscall.MS_SHARED, ""); err != nil {
		return err
	}
	for _, m := range is.Mounts {
		target := in(m.Target)
		if err := mount(m.Source, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return err
		}
		if m.ReadOnly {
			if err := remountReadOnly(target); err != nil {
				return err
			}
		}
	}
	if err := mount("none", in("/proc"), "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return err
	}
	if is.Shm {
		if err := mount("none", in("/dev/shm"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=50%"); err != nil {
			return err
		}
	}
	if is.Pts {
		// A private devpts is optional: skip it where the kernel refuses.
		if mount("none", in("/dev/pts"), "devpts", syscall.MS_NOSUID|syscall.MS_NOEXEC, "newinstance,mode=0620,ptmxmode=0666") == nil {
			if err := os.Symlink("/dev/pts/ptmx", in("/dev/ptmx")); err != nil {
				return err
			}
		}
	}
	if err := syscall.Sethostname([]byte("localhost")); err != nil {
		return fmt.Errorf("set host name: %w", err)
	}
	if err := syscall.Setdomainname([]byte("(none)")); err != nil {
		return fmt.Errorf("set domain name: %w", err)
	}
	if !is.Network {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := os.Mkdir("real-root", 0o500); err != nil {
		return fmt.Errorf("create real-root: %w", err)
	}
	if err := syscall.PivotRoot(".", "real-root"); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := syscall.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := syscall.Unmount("real-root", syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount real-root: %w", err)
	}
	if err := os.Remove("real-root"); err != nil {
		return fmt.Errorf("remove real-root: %w", err)
	}
	return nil
}

func mount(source, target, fstype string, flags uintptr, data string) error {
	if err := syscall.Mount(source, target, fstype, flags, data); err != nil {
		if source == "" {
			source = fstype
		}
		return fmt.Errorf("mount %s on %s: %w", source, target, err)
	}
	return nil
}

// remountReadOnly makes a bind mount read-only. Inside a user namespace the
// remount must keep the flags locked by the mount's origin (nosuid, nodev,
// noexec, atime), so it reads them back first.
func remountReadOnly(target string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(target, &st); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	flags := uintptr(syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{stNoSuid, syscall.MS_NOSUID},
		{stNoDev, syscall.MS_NODEV},
		{stNoExec, syscall.MS_NOEXEC},
		{stNoAtime, syscall.MS_NOATIME},
		{stNoDirAtime, syscall.MS_NODIRATIME},
		{stRelatime, syscall.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := syscall.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

// loopbackUp brings up lo in the new network namespace with SIOCSIFFLAGS.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name[16], then the union (flags: short)
	copy(ifr[:], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return fmt.Errorf("bring up lo: %w", e)
	}
	flags := *(*uint16)(unsafe.Pointer(&ifr[16])) | syscall.IFF_UP
	*(*uint16)(unsafe.Pointer(&ifr[16])) = flags
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return fmt.Errorf("bring up lo: %w", e)
	}
	return nil
}

func prctl(option, arg2, arg3 uintptr) error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, option, arg2, arg3, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}
