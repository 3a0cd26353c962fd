//go:build linux

package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"ferry/internal/storefs"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"
)

// Capabilities the init keeps across its exec inside a user namespace, where
// it runs as uid 1000 and would otherwise lose them (capabilities(7)).
const (
	capSetgid    = 6
	capSetuid    = 7
	capNetAdmin  = 12
	capSysChroot = 18
	capSysAdmin  = 21
)

// probe caches what Available found.
var probe struct {
	once    sync.Once
	err     error
	userNS  bool // create a user namespace
	checked bool
}

// Available reports whether sandboxed builds work here, running a trial
// sandbox init once and caching the answer. It needs [Init] to be wired into
// the program's main.
func Available() error {
	probe.once.Do(func() {
		probe.checked = true
		var errs []error
		for _, userNS := range namespaceChoices() {
			err := runProbe(userNS)
			if err == nil {
				probe.userNS = userNS
				probe.err = nil
				return
			}
			errs = append(errs, err)
		}
		probe.err = fmt.Errorf("sandbox unavailable: %w", errors.Join(errs...))
	})
	return probe.err
}

// namespaceChoices lists whether to try a user namespace, in order of
// preference. Nix uses one whenever /proc/sys/user/max_user_namespaces is not
// 0; without one only root can create the other namespaces.
func namespaceChoices() []bool {
	var choices []bool
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); !disableUserNS && (err != nil || strings.TrimSpace(string(b)) != "0") {
		choices = append(choices, true)
	}
	if os.Geteuid() == 0 {
		choices = append(choices, false)
	}
	return choices
}

// disableUserNS is set by tests to exercise the root-only path.
var disableUserNS bool

func runProbe(userNS bool) error {
	p, err := startInit(context.Background(), &initSpec{Mode: modeProbe}, sandboxAttr(userNS, false, 0, 0), nil)
	if err != nil {
		return err
	}
	return p.Wait()
}

// sandboxAttr returns the clone attributes of a sandbox init
// (docs/store.md §8.3: always NEWPID, NEWNS, NEWIPC, NEWUTS; NEWNET
// unless network; NEWUSER with uid 1000 and gid 100 mapped to the caller's).
// uid and gid are the host ids behind 1000 and 100; -1 means the caller's.
func sandboxAttr(userNS, network bool, uid, gid int) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
	}
	if !network {
		attr.Cloneflags |= syscall.CLONE_NEWNET
	}
	if userNS {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		if uid <= 0 {
			uid = os.Geteuid()
		}
		if gid <= 0 {
			gid = os.Getegid()
		}
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: sandboxUID, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: sandboxGID, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
		attr.AmbientCaps = []uintptr{capSetgid, capSetuid, capNetAdmin, capSysChroot, capSysAdmin}
	}
	return attr
}

// Process is a running builder. Its methods are safe for concurrent use.
type Process struct {
	cmd      *exec.Cmd
	pid      int
	logR     *os.File
	copyDone chan struct{}
	copyErr  error // set before copyDone is closed
	done     chan struct{}
	ctx      context.Context

	// Set when the process is sandboxed.
	root, storeIn, realStore string
	outputs                  []string

	mu       sync.Mutex
	exited   bool // guarded by mu: the pid may be reaped, never signal it
	canceled bool // guarded by mu: killed because ctx ended

	waitOnce sync.Once
	waitErr  error
}

// Pid returns the builder's process id on the host. The builder leads its own
// session and process group.
func (p *Process) Pid() int { return p.pid }

// Start starts the builder described by spec and returns once it has been
// exec'd, or with the error that prevented it (a setup error inside the
// sandbox included). Cancelling ctx kills the builder and everything it
// started. The caller must call Wait.
func Start(ctx context.Context, spec *Spec) (*Process, error) {
	if spec.Builder == "" {
		return nil, errors.New("start builder: no builder")
	}
	if spec.BuildDir == "" {
		return nil, errors.New("start builder: no build directory")
	}
	argv := append([]string{filepath.Base(spec.Builder)}, spec.Args...)
	if !spec.Sandbox {
		if spec.RealStoreDir != "" && filepath.Clean(spec.RealStoreDir) != filepath.Clean(spec.StoreDir) {
			return nil, fmt.Errorf("start builder: %w", ErrSandboxRequired)
		}
		is := &initSpec{Mode: modeDirect, Builder: spec.Builder, Args: argv, Env: spec.Env, Dir: spec.BuildDir,
			UID: spec.UID, GID: spec.GID, Groups: spec.UID != 0 || spec.GID != 0}
		attr := &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		return startInit(ctx, is, attr, spec.Stdout)
	}

	if err := Available(); err != nil {
		return nil, fmt.Errorf("start builder: %w", err)
	}
	is, err := prepareChroot(spec)
	if err != nil {
		return nil, fmt.Errorf("start builder: %w", err)
	}
	is.Mode = modeSandbox
	is.Builder, is.Args, is.Env = spec.Builder, argv, spec.Env
	if probe.userNS {
		if spec.UID != 0 || spec.GID != 0 {
			// The init runs unmapped; become nixbld before the exec.
			is.UID, is.GID = sandboxUID, sandboxGID
		}
	} else {
		is.UID, is.GID, is.Groups = spec.UID, spec.GID, spec.UID != 0 || spec.GID != 0
	}
	p, err := startInit(ctx, is, sandboxAttr(probe.userNS, spec.Network, spec.UID, spec.GID), spec.Stdout)
	if err != nil {
		if rmErr := removeChroot(is.Root); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		return nil, fmt.Errorf("start builder: %w", err)
	}
	p.root, p.storeIn, p.realStore = is.Root, is.Store, realStoreDir(spec)
	p.outputs = spec.Outputs
	return p, nil
}

func realStoreDir(spec *Spec) string {
	if spec.RealStoreDir != "" {
		return spec.RealStoreDir
	}
	return spec.StoreDir
}

// startInit re-executes this program as the sandbox init with is on fd 3 and
// an error pipe on fd 4, and waits until the init has exec'd the builder
// (the error pipe is close-on-exec) or reported why it could not.
func startInit(ctx context.Context, is *initSpec, attr *syscall.SysProcAttr, stdout io.Writer) (*Process, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer specR.Close()
	defer specW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer errR.Close()
	defer errW.Close()
	logR, logW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer logW.Close()

	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{initArgv0},
		Env:         []string{initEnv + "=" + initEnvValue},
		Stdout:      logW,
		Stderr:      logW,
		ExtraFiles:  []*os.File{specR, errW},
		SysProcAttr: attr,
	}
	if err := cmd.Start(); err != nil {
		logR.Close()
		return nil, fmt.Errorf("start sandbox init: %w", err)
	}
	specR.Close()
	errW.Close()
	logW.Close()

	p := &Process{
		cmd:      cmd,
		pid:      cmd.Process.Pid,
		logR:     logR,
		copyDone: make(chan struct{}),
		done:     make(chan struct{}),
		ctx:      ctx,
	}
	go p.copyLog(stdout)

	encErr := json.NewEncoder(specW).Encode(is)
	specW.Close()
	msg, readErr := io.ReadAll(io.LimitReader(errR, 64<<10))
	switch {
	case is.Mode == modeProbe && string(msg) == probeOK:
	case len(msg) > 0 || readErr != nil || encErr != nil || is.Mode == modeProbe:
		p.Kill()
		waitErr := p.Wait()
		switch {
		case len(msg) > 0:
			return nil, errors.New(string(msg))
		case is.Mode == modeProbe:
			return nil, fmt.Errorf("sandbox init did not answer (does main call sandbox.Init?): %v", waitErr)
		case encErr != nil:
			return nil, fmt.Errorf("send sandbox spec: %w", encErr)
		default:
			return nil, fmt.Errorf("read sandbox init: %w", readErr)
		}
	}
	go func() {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.canceled = true
			p.mu.Unlock()
			p.Kill()
		case <-p.done:
		}
	}()
	return p, nil
}

// copyLog copies the builder's output until every writer has closed it.
func (p *Process) copyLog(w io.Writer) {
	defer close(p.copyDone)
	defer p.logR.Close()
	if w == nil {
		w = io.Discard
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := p.logR.Read(buf)
		if n > 0 && p.copyErr == nil {
			if _, werr := w.Write(buf[:n]); werr != nil {
				p.copyErr = fmt.Errorf("write build log: %w", werr)
				p.Kill()
			}
		}
		if err != nil {
			return
		}
	}
}

// Kill kills the builder's process group with SIGKILL; in the sandbox this
// also kills every other process in its PID namespace. It is a no-op once the
// builder has exited.
func (p *Process) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	err := syscall.Kill(-p.pid, syscall.SIGKILL)
	if err2 := syscall.Kill(p.pid, syscall.SIGKILL); err == nil || err2 == nil {
		return nil
	}
	return fmt.Errorf("kill builder: %w", err)
}

// Wait waits until the builder's output reaches EOF, then kills its process
// group (Nix's buildDone: a builder that closes its stdout and stderr early
// is killed), reaps it, and in the sandbox moves the outputs into the store
// and removes the chroot. It returns nil for exit status 0, an error wrapping
// the context's error if the builder was killed because ctx ended, an
// *exec.ExitError for any other status, or the error of the log writer or of
// the move. Later calls return the same result.
func (p *Process) Wait() error {
	p.waitOnce.Do(func() { p.waitErr = p.wait() })
	return p.waitErr
}

func (p *Process) wait() error {
	<-p.copyDone
	p.Kill()
	werr := waitExited(p.pid)
	p.mu.Lock()
	p.exited = true
	canceled := p.canceled
	p.mu.Unlock()
	err := p.cmd.Wait()
	close(p.done)
	if werr != nil && err == nil {
		err = werr
	}
	var errs []error
	switch {
	case canceled && err != nil:
		errs = append(errs, fmt.Errorf("run builder: %w", p.ctx.Err()))
	case err != nil:
		errs = append(errs, err)
	}
	if p.copyErr != nil {
		errs = append(errs, p.copyErr)
	}
	if p.root != "" {
		if err := p.moveOutputs(); err != nil {
			errs = append(errs, err)
		}
		if err := removeChroot(p.root); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 1 {
		return errs[0] // keep *exec.ExitError unwrapped
	}
	return errors.Join(errs...)
}

// waitExited blocks until pid has exited without reaping it, so Kill can
// still signal its process group safely until Wait marks it exited.
func waitExited(pid int) error {
	var info [128]byte // siginfo_t
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info)), syscall.WEXITED|wNoWait, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("wait for builder: %w", e)
		}
		return nil
	}
}

// moveOutputs renames every output the builder created in the chroot to the
// real store directory.
func (p *Process) moveOutputs() error {
	var errs []error
	for _, out := range p.outputs {
		base := filepath.Base(out)
		src := filepath.Join(p.root, p.storeIn, base)
		if _, err := os.Lstat(src); err != nil {
			continue // not built: the caller reports missing outputs
		}
		dst := filepath.Join(p.realStore, base)
		if _, err := os.Lstat(dst); err == nil {
			errs = append(errs, fmt.Errorf("move output %s: %s already exists", out, dst))
			continue
		}
		if err := os.Rename(src, dst); err != nil {
			errs = append(errs, fmt.Errorf("move output %s: %w", out, err))
		}
	}
	return errors.Join(errs...)
}

// prepareChroot builds the sandbox's root directory on the host and returns
// the mounts the init must make in it (docs/store.md §8.3).
func prepareChroot(spec *Spec) (*initSpec, error) {
	storeDir := filepath.Clean(spec.StoreDir)
	if !filepath.IsAbs(storeDir) || storeDir == "/" {
		return nil, fmt.Errorf("prepare sandbox: bad store directory %q", spec.StoreDir)
	}
	real := filepath.Clean(realStoreDir(spec))
	dir := spec.Dir
	if dir == "" {
		dir = defaultBuildD
	}
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) || dir == "/" {
		return nil, fmt.Errorf("prepare sandbox: bad build directory %q", spec.Dir)
	}

	var root string
	if spec.Name != "" {
		if strings.ContainsRune(spec.Name, '/') || spec.Name == "." || spec.Name == ".." {
			return nil, fmt.Errorf("prepare sandbox: bad name %q", spec.Name)
		}
		root = filepath.Join(real, spec.Name+".chroot")
		if err := removeChroot(root); err != nil {
			return nil, err
		}
		if err := os.Mkdir(root, 0o750); err != nil {
			return nil, fmt.Errorf("prepare sandbox: %w", err)
		}
	} else {
		var err error
		if root, err = os.MkdirTemp(real, "ferry-sandbox-*.chroot"); err != nil {
			return nil, fmt.Errorf("prepare sandbox: %w", err)
		}
	}
	is := &initSpec{Root: root, Store: storeDir, Dir: dir, Network: spec.Network}
	if err := buildTree(is, spec, real); err != nil {
		removeChroot(root)
		return nil, fmt.Errorf("prepare sandbox: %w", err)
	}
	return is, nil
}

func buildTree(is *initSpec, spec *Spec, real string) error {
	root := is.Root
	in := func(p string) string { return filepath.Join(root, p) }
	if err := os.Chmod(root, 0o750); err != nil {
		return err
	}
	if spec.GID != 0 {
		// The build user reaches the chroot and creates outputs through
		// its group, as in Nix.
		if err := os.Chown(root, -1, spec.GID); err != nil {
			return err
		}
	}
	if err := mkdirMode(in("/tmp"), 0o1777); err != nil {
		return err
	}
	if err := mkdirMode(in("/etc"), 0o755); err != nil {
		return err
	}
	files := map[string]string{"/etc/passwd": passwdFile, "/etc/group": groupFile}
	if spec.Network {
		files["/etc/nsswitch.conf"] = nsswitchFile
	} else {
		files["/etc/hosts"] = hostsFile
	}
	for name, content := range files {
		if err := writeFileMode(in(name), content, 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(in(is.Store), 0o755); err != nil {
		return err
	}
	if err := mkdirMode(in(is.Store), 0o1775); err != nil {
		return err
	}
	if spec.GID != 0 {
		if err := os.Chown(in(is.Store), -1, spec.GID); err != nil {
			return err
		}
	}

	targets := map[string]bool{}
	addBind := func(source, target string, readOnly bool) error {
		if targets[target] {
			return nil
		}
		st, err := os.Stat(source)
		if err != nil {
			return err
		}
		if err := makeMountPoint(in(target), st.IsDir()); err != nil {
			return err
		}
		targets[target] = true
		is.Mounts = append(is.Mounts, mountSpec{Source: source, Target: target, ReadOnly: readOnly})
		return nil
	}

	for _, out := range spec.Outputs {
		if filepath.Dir(out) != is.Store {
			return fmt.Errorf("output %s is not in %s", out, is.Store)
		}
		targets[out] = true
	}
	for _, p := range spec.Inputs {
		if filepath.Dir(p) != is.Store {
			return fmt.Errorf("input %s is not in %s", p, is.Store)
		}
		if targets[p] {
			if contains(spec.Outputs, p) {
				return fmt.Errorf("%s is both an input and an output", p)
			}
			continue
		}
		source := filepath.Join(real, filepath.Base(p))
		st, err := os.Lstat(source)
		if err != nil {
			return fmt.Errorf("input %s: %w", p, err)
		}
		if st.Mode()&os.ModeSymlink != 0 {
			l, err := os.Readlink(source)
			if err != nil {
				return err
			}
			if err := os.Symlink(l, in(p)); err != nil {
				return err
			}
			targets[p] = true
			continue
		}
		if !st.IsDir() && !st.Mode().IsRegular() {
			return fmt.Errorf("input %s is not a directory, file or symlink", p)
		}
		if err := addBind(source, p, true); err != nil {
			return fmt.Errorf("input %s: %w", p, err)
		}
	}

	pathTargets := make([]string, 0, len(spec.Paths))
	for t := range spec.Paths {
		pathTargets = append(pathTargets, t)
	}
	sort.Strings(pathTargets)
	ownDev := false
	for _, t := range pathTargets {
		source := spec.Paths[t]
		target := filepath.Clean(t)
		if !filepath.IsAbs(target) || target == "/" {
			return fmt.Errorf("sandbox path %q: target is not absolute", t)
		}
		optional := strings.HasSuffix(source, "?")
		source = strings.TrimSuffix(source, "?")
		if _, err := os.Stat(source); err != nil && optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		readOnly := true
		if target == "/dev" {
			ownDev, readOnly = true, false // device nodes and /dev/shm stay writable
		}
		if err := addBind(source, target, readOnly); err != nil {
			return fmt.Errorf("sandbox path %s: %w", t, err)
		}
	}

	if !ownDev {
		if err := mkdirMode(in("/dev"), 0o755); err != nil {
			return err
		}
		for _, dev := range []string{"full", "null", "random", "tty", "urandom", "zero"} {
			if _, err := os.Stat("/dev/" + dev); err != nil {
				continue
			}
			if err := addBind("/dev/"+dev, "/dev/"+dev, false); err != nil {
				return err
			}
		}
		links := map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
		for name, target := range links {
			if err := os.Symlink(target, in("/dev/"+name)); err != nil {
				return err
			}
		}
		if err := mkdirMode(in("/dev/shm"), 0o755); err != nil {
			return err
		}
		is.Shm = true
		if _, err := os.Stat("/dev/pts/ptmx"); err == nil {
			if err := mkdirMode(in("/dev/pts"), 0o755); err != nil {
				return err
			}
			is.Pts = true
		}
	}
	if err := mkdirMode(in("/proc"), 0o555); err != nil {
		return err
	}
	if spec.Network {
		for _, f := range []string{"/etc/resolv.conf", "/etc/services", "/etc/hosts"} {
			if _, err := os.Stat(f); err == nil {
				if err := addBind(f, f, true); err != nil {
					return err
				}
			}
		}
	}
	if err := addBind(spec.BuildDir, is.Dir, false); err != nil {
		return fmt.Errorf("build directory: %w", err)
	}
	// Parents before children: a path sorts before every path below it.
	sort.SliceStable(is.Mounts, func(i, j int) bool { return is.Mounts[i].Target < is.Mounts[j].Target })
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// mkdirMode creates a directory with a raw mode (os.FileMode has no 01000).
func mkdirMode(path string, mode uint32) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return err
	}
	if err := syscall.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

func writeFileMode(path, content string, mode os.FileMode) error {
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// makeMountPoint creates an empty directory or file to mount on.
func makeMountPoint(path string, dir bool) error {
	if dir {
		return os.MkdirAll(path, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// removeChroot removes a chroot directory, refusing if anything is mounted
// below it in this mount namespace: removing it would then delete the
// mounted files (inputs, the build directory, /dev).
func removeChroot(root string) error {
	if _, err := os.Lstat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	mounted, err := mountedBelow(root)
	if err != nil {
		return fmt.Errorf("remove sandbox %s: %w", root, err)
	}
	if mounted != "" {
		return fmt.Errorf("remove sandbox %s: %s is still mounted", root, mounted)
	}
	// storefs.Delete empties directories the builder left read-only.
	if _, err := storefs.Delete(root); err != nil {
		return fmt.Errorf("remove sandbox: %w", err)
	}
	return nil
}

// mountedBelow returns a mount point at or below dir, or "".
func mountedBelow(dir string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			return mp, nil
		}
	}
	return "", sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
