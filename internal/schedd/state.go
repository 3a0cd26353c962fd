package schedd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"ferry/internal/localstore"
	"ferry/internal/machines"
	"ferry/nix/storepath"
	"ferry/store"
)

// The state file, rewritten (whole, by rename) on every change of a
// machine's health and at the start and end of every build, holds what a
// restarted daemon must know: each machine's back-off, the builds in
// flight, the recent failures.
const stateName = "ferry-scheduler.state.json"

func statePath(dir string) string { return filepath.Join(dir, stateName) }
func lockPath(dir string) string  { return filepath.Join(dir, "ferry-scheduler.lock") }

var pid = os.Getpid()

type savedMachine struct {
	Failures  int       `json:"failures"`
	DownUntil time.Time `json:"downUntil"`
	LastError string    `json:"lastError,omitempty"`
}

type savedState struct {
	PID      int                     `json:"pid"`
	Machines map[string]savedMachine `json:"machines"`
	InFlight []RunningBuild          `json:"inFlight"`
	Recent   []Failure               `json:"recent"`
}

func (d *Daemon) machineList() []*machines.Machine {
	ms := make([]*machines.Machine, 0, len(d.order))
	for _, uri := range d.order {
		ms = append(ms, d.machines[uri].m)
	}
	return ms
}

func sortRunning(rs []RunningBuild) {
	sort.Slice(rs, func(i, j int) bool {
		if !rs[i].Started.Equal(rs[j].Started) {
			return rs[i].Started.Before(rs[j].Started)
		}
		return rs[i].DrvPath < rs[j].DrvPath
	})
}

// save writes the state file. Failing to is logged, not fatal: the
// state is an aid to a restart, not the record of any output (outputs
// are registered in the client store only once copied whole).
func (d *Daemon) save() {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	d.mu.Lock()
	st := savedState{PID: pid, Machines: map[string]savedMachine{}, InFlight: []RunningBuild{}, Recent: append([]Failure{}, d.recent...)}
	for uri, h := range d.health {
		st.Machines[uri] = h
	}
	for uri, ms := range d.machines {
		if ms.failures > 0 {
			st.Machines[uri] = savedMachine{Failures: ms.failures, DownUntil: ms.downUntil, LastError: ms.lastErr}
		}
	}
	for _, b := range d.running {
		st.InFlight = append(st.InFlight, *b)
	}
	d.mu.Unlock()
	sortRunning(st.InFlight)
	b, err := json.MarshalIndent(&st, "", "  ")
	if err == nil {
		err = writeFileAtomic(statePath(d.opts.StateDir), b)
	}
	if err != nil {
		d.say("warning: cannot save the state: %v", err)
	}
}

func writeFileAtomic(name string, b []byte) error {
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// load reads the state a previous daemon left: machine back-offs go on
// where they were; each build it had in flight is reported among the
// recent failures as interrupted, saying whether its outputs are valid in
// the client store (the copy back registers a path only once whole, so
// they are either valid or absent, never partial). The client whose
// connection dropped saw an error; its next attempt builds again.
func (d *Daemon) load() error {
	b, err := os.ReadFile(statePath(d.opts.StateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		d.say("warning: ignoring the unreadable state file %s: %v", statePath(d.opts.StateDir), err)
		return nil
	}
	for uri, h := range st.Machines {
		d.health[uri] = h
	}
	d.recent = st.Recent
	for _, rb := range st.InFlight {
		msg := fmt.Sprintf("interrupted: the scheduler (pid %d) stopped during the build; %s", st.PID, d.outputsState(rb))
		d.recent = append(d.recent, Failure{Time: time.Now(), DrvPath: rb.DrvPath, Machine: rb.Machine, Message: msg})
		d.say("build of '%s' on '%s' was %s", rb.DrvPath, rb.Machine, msg)
	}
	if len(d.recent) > maxRecent {
		d.recent = d.recent[len(d.recent)-maxRecent:]
	}
	return nil
}

// outputsState says whether an interrupted build's outputs are valid.
func (d *Daemon) outputsState(rb RunningBuild) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := d.opts.Open(ctx, rb.Store, &store.OpenOptions{})
	if err != nil {
		return "its client store cannot be opened: " + err.Error()
	}
	defer st.Close()
	ls, ok := st.(*localstore.Store)
	if !ok {
		return "its client store is not local"
	}
	drv, err := ls.ReadDerivation(ctx, rb.DrvPath)
	if err != nil {
		return "its derivation cannot be read: " + err.Error()
	}
	var outs []storepath.Path
	for _, p := range drv.OutputPaths() {
		outs = append(outs, p)
	}
	valid, err := ls.QueryValidPaths(ctx, outs)
	if err != nil {
		return "its outputs cannot be checked: " + err.Error()
	}
	if len(outs) > 0 && len(valid) == len(outs) {
		return "its outputs were copied back whole and are valid"
	}
	var names []string
	for _, p := range valid {
		names = append(names, string(p))
	}
	if len(names) > 0 {
		return fmt.Sprintf("only some outputs are valid (%s), each whole; the next attempt builds it again", strings.Join(names, ", "))
	}
	return "none of its outputs is valid (nothing partial was registered); the next attempt builds it again"
}
