package machines

// Interop tests against real Nix 2.8's build-remote: its parse of the
// machines format (as its "cannot build on" lines and its "Failed to find
// a machine" table show it) and its slot locks.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"ferry/internal/nixtest"
)

func nixSystem(t *testing.T) string {
	return strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
}

// writeExpr writes a one-derivation Nix expression.
func writeExpr(t *testing.T, system, name, script string, features []string) string {
	t.Helper()
	q := make([]string, len(features))
	for i, f := range features {
		q[i] = fmt.Sprintf("%q", f)
	}
	text := fmt.Sprintf("derivation { name = %q; system = %q; builder = \"/bin/sh\"; args = [ \"-c\" %q ]; requiredSystemFeatures = [ %s ]; }\n",
		name, system, script, strings.Join(q, " "))
	p := filepath.Join(t.TempDir(), "expr.nix")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func nixCmd(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = nixtest.Env(t.TempDir())
	return cmd
}

var (
	cannotRE = regexp.MustCompile(`(?m)^cannot build on '([^']*)': `)
	tableRE  = regexp.MustCompile(`(?s)\(systems, maxjobs, supportedFeatures, mandatoryFeatures\)\n(.*)`)
)

// nixView is what build-remote printed: the machines it tried, in order
// (every connection fails, so it tries each candidate once, in its order
// of preference), and its table of all machines.
func nixView(stderr string) (tried, table []string) {
	for _, m := range cannotRE.FindAllStringSubmatch(stderr, -1) {
		tried = append(tried, m[1])
	}
	if m := tableRE.FindStringSubmatch(stderr); m != nil {
		for _, l := range strings.Split(m[1], "\n") {
			if !strings.HasPrefix(l, "(") {
				break
			}
			table = append(table, l)
		}
	}
	return tried, table
}

// ferryView is the same, predicted from ferry's parse: Select repeated
// with idle slots, the chosen machine disabled each time as build-remote
// disables a machine it cannot connect to.
func ferryView(t *testing.T, ms []*Machine, system string, features []string) (tried, table []string) {
	l, err := OpenLoad(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	enabled := append([]*Machine(nil), ms...)
	for {
		s, _, err := l.Select(enabled, system, features)
		if err != nil {
			t.Fatal(err)
		}
		if s == nil {
			break
		}
		s.Release()
		tried = append(tried, s.Machine.URI)
		for i, m := range enabled {
			if m == s.Machine {
				enabled = append(enabled[:i], enabled[i+1:]...)
				break
			}
		}
	}
	for _, m := range ms {
		table = append(table, fmt.Sprintf("(%s, %d, %s, %s)", strings.Join(m.Systems, ", "), m.MaxJobs,
			strings.Join(m.SupportedFeatures, ", "), strings.Join(m.MandatoryFeatures, ", ")))
	}
	return tried, table
}

// TestInteropParse: real nix-build --builders SPEC -j0 against ferry's
// Parse of SPEC: the same machines (systems, max jobs, features in the
// table), the same store URIs (schemeless hosts as ssh://) tried in the
// same order (the speed factors, 0 as 1, and CanBuild), and the same lines
// refused, at the same column.
func TestInteropParse(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "false")
	system := nixSystem(t)
	dir := t.TempDir()
	// Hosts are "localhost" with remote-program=false: Nix runs it
	// directly, and the handshake fails at once.
	h := func(n int) string { return fmt.Sprintf("localhost?remote-program=false&remote-store=m%d", n) }
	inner := filepath.Join(dir, "inner")
	os.WriteFile(inner, []byte(h(20)+" "+system+" - +2 6 big\n@"+filepath.Join(dir, "missing")+"\n"), 0o644)
	outer := filepath.Join(dir, "outer")
	os.WriteFile(outer, []byte("# outer\n"+h(10)+" - - 007 2 big - QUJD=!!\n@"+inner+" ; "+h(11)+" "+system+",aarch64-linux\t- 3 4 big,kvm,big - A\n"), 0o644)

	good := []struct {
		spec     string
		features []string
	}{
		{"ssh://" + h(1) + " " + system + " - 2 1 big - ; " + h(2) + " " + system + ",i686-linux - 3 5 big,kvm - ;" +
			h(3) + " " + system + " - 1 0 - big ; " + h(4) + " aarch64-linux - 4 3 big; " + h(5) + " " + system + " - 1 3 big # comment ; " +
			h(6) + " " + system + " - 1 7 big", []string{"big"}},
		{"\n " + h(7) + " ,, - 0 9\n" + h(8) + "\n@" + outer + "\n" + h(9) + " " + system + " - - 3 - big", []string{"big"}},
		{h(30) + " - - 1 2 a,b b; " + h(31) + " - - 1 2 a; " + h(32) + " - - 1 1 a,b,c", []string{"a", "b"}},
	}
	for i, c := range good {
		ms, err := Parse(c.spec, system)
		if err != nil {
			t.Fatalf("spec %d: %v", i, err)
		}
		wantTried, wantTable := ferryView(t, ms, system, c.features)
		expr := writeExpr(t, system, fmt.Sprintf("mi-parse-%d", i), "echo > $out", c.features)
		cmd := nixCmd(t, "nix-build", "--store", t.TempDir(), "-j0", "--option", "substitute", "false", "--no-out-link",
			"--builders", c.spec, expr)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err = cmd.Run()
		if err == nil {
			t.Fatalf("spec %d: nix-build built without a machine:\n%s", i, stderr.String())
		}
		tried, table := nixView(stderr.String())
		if strings.Join(tried, "\n") != strings.Join(wantTried, "\n") || strings.Join(table, "\n") != strings.Join(wantTable, "\n") {
			t.Errorf("spec %d %q:\nNix tried  %q\nferry says %q\nNix table  %q\nferry says %q\nstderr:\n%s",
				i, c.spec, tried, wantTried, table, wantTable, stderr.String())
		}
		t.Logf("spec %d: Nix tried %q; table %q", i, tried, table)
		if len(tried) == 0 || len(table) != len(ms) {
			t.Errorf("spec %d: the test saw too little: tried %q, table %q", i, tried, table)
		}
	}

	colRE := regexp.MustCompile(`bad machine specification: (?:failed to convert |a )?column #(\d)|store URL was not found`)
	for _, c := range []struct{ spec, nixColumn string }{
		{"h " + system + " - 1.5 1", "3"},
		{"h " + system + " - 4294967296", "3"},
		{"h " + system + " - -0", "3"},
		{"h " + system + " - + 1", "3"},
		{"h " + system + " - 1 -1", "4"},
		{"h " + system + " - 1 0x1", "4"},
		{"h " + system + " - 1 1 - - !!!", "7"},
		{"ok;\n- " + system, "0"},
		{"@" + writeFile(t, "bad", "good\nh - - 1 1.5\n"), "4"},
	} {
		_, ferryErr := Parse(c.spec, system)
		expr := writeExpr(t, system, "mi-bad", "echo > $out", nil)
		cmd := nixCmd(t, "nix-build", "--store", t.TempDir(), "-j0", "--option", "substitute", "false", "--no-out-link",
			"--builders", c.spec, expr)
		out, _ := cmd.CombinedOutput()
		m := colRE.FindStringSubmatch(string(out))
		if m == nil {
			t.Errorf("%q: Nix did not refuse it:\n%s", c.spec, out)
			continue
		}
		if m[1] == "" {
			m[1] = "0"
		}
		le, ok := ferryErr.(*LineError)
		if !ok || m[1] != c.nixColumn || fmt.Sprint(le.Column) != c.nixColumn {
			t.Errorf("%q: Nix refused column %s (%s), ferry: %v", c.spec, m[1], strings.TrimSpace(string(out)), ferryErr)
		}
	}
}

func writeFile(t *testing.T, name, text string) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// lockSetup is a client store (its state directory holds current-load, as
// build-remote finds it for a local store rooted at DIR: DIR/nix/var/nix),
// a remote store reached as ssh://localhost with nix-store as the remote
// program (no sshd), and a derivation instantiated in the client store.
type lockSetup struct {
	client, remote, line, drv string
	m                         *Machine
	load                      *Load
}

func newLockSetup(t *testing.T, system, name, script string, jobs int) *lockSetup {
	t.Helper()
	client, remote := t.TempDir(), t.TempDir()
	expr := writeExpr(t, system, name, script, nil)
	drv := strings.TrimSpace(string(nixtest.Nix(t, nil, "nix-instantiate", "--store", client, expr)))
	line := fmt.Sprintf("ssh://localhost?remote-program=nix-store&remote-store=%s %s - %d 1", remote, system, jobs)
	ms, err := Parse(line, system)
	if err != nil {
		t.Fatal(err)
	}
	load, err := OpenLoad(filepath.Join(client, "nix", "var", "nix"))
	if err != nil {
		t.Fatal(err)
	}
	return &lockSetup{client: client, remote: remote, line: line, drv: drv, m: ms[0], load: load}
}

func (s *lockSetup) build(t *testing.T) (*exec.Cmd, *bytes.Buffer, chan error) {
	cmd := nixCmd(t, "nix-build", "--store", s.client, "-j0", "--option", "substitute", "false", "--no-out-link",
		"--builders", s.line, s.drv)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	return cmd, &out, done
}

// built lists the client store's entries of the derivation's name but the
// .drv itself.
func (s *lockSetup) built(t *testing.T, name string) []string {
	return builtIn(s.client, name)
}

func builtIn(st, name string) []string {
	ents, _ := os.ReadDir(filepath.Join(st, "nix", "store"))
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), "-"+name) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestInteropSlotLocks: ferry's Load and real Nix's build-remote share the
// slots of a machine. Ferry holding every slot makes nix-build postpone
// until they are released; a Nix build holding the slot makes ferry's
// TryAcquire return nil and Used count it.
func TestInteropSlotLocks(t *testing.T) {
	nixtest.RequireNix(t)
	system := nixSystem(t)
	tag := fmt.Sprint(time.Now().UnixNano())

	t.Run("FerryHoldsNixWaits", func(t *testing.T) {
		name := "mi-wait-" + tag
		s := newLockSetup(t, system, name, "echo built > $out", 2)
		var held []*Slot
		for i := 0; i < 2; i++ {
			sl, err := s.load.TryAcquire(s.m)
			if err != nil || sl == nil {
				t.Fatalf("slot %d: %v", i, err)
			}
			held = append(held, sl)
		}
		_, out, done := s.build(t)
		select {
		case err := <-done:
			t.Fatalf("nix-build ended while ferry held every slot: %v\n%s", err, out)
		case <-time.After(4 * time.Second):
		}
		if b := s.built(t, name); len(b) != 0 {
			t.Fatalf("built while ferry held every slot: %q", b)
		}
		if n, err := s.load.Used(s.m); err != nil || n != 2 {
			t.Errorf("Used = %d, %v; want 2", n, err)
		}
		for _, sl := range held {
			sl.Release()
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("nix-build after the release: %v\n%s", err, out)
			}
		case <-time.After(90 * time.Second):
			t.Fatalf("nix-build did not finish after the release:\n%s", out)
		}
		if b, r := s.built(t, name), builtIn(s.remote, name); len(b) != 1 || len(r) != 1 {
			t.Errorf("after the build: client %q, builder %q\n%s", b, r, out)
		}
	})

	t.Run("NixHoldsFerryWaits", func(t *testing.T) {
		name := "mi-hold-" + tag
		s := newLockSetup(t, system, name, "sleep 8; echo built > $out", 1)
		_, out, done := s.build(t)
		deadline := time.Now().Add(60 * time.Second)
		for {
			n, err := s.load.Used(s.m)
			if err != nil {
				t.Fatal(err)
			}
			if n == 1 {
				break
			}
			select {
			case err := <-done:
				t.Fatalf("nix-build ended before ferry saw its slot: %v\n%s", err, out)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("Nix never took the slot:\n%s", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if sl, err := s.load.TryAcquire(s.m); err != nil || sl != nil {
			sl.Release()
			t.Fatalf("TryAcquire while Nix builds: %+v, %v", sl, err)
		}
		if _, err := os.Stat(s.load.SlotFile(s.m, 0)); err != nil {
			t.Errorf("Nix's slot file is not ferry's: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("nix-build: %v\n%s", err, out)
			}
		case <-time.After(90 * time.Second):
			t.Fatalf("nix-build did not finish:\n%s", out)
		}
		if b := s.built(t, name); len(b) != 1 {
			t.Errorf("after the build: %q\n%s", b, out)
		}
		if n, _ := s.load.Used(s.m); n != 0 {
			t.Errorf("Used after Nix's build = %d", n)
		}
		sl, err := s.load.TryAcquire(s.m)
		if err != nil || sl == nil {
			t.Fatalf("TryAcquire after Nix's build: %v", err)
		}
		sl.Release()
	})
}
