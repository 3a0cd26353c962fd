package schedd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"ferry/internal/hookapi"
	"ferry/internal/localstore"
	"ferry/internal/remote"
	"ferry/internal/settings"
	"ferry/nix/derivation"
	"ferry/nix/storepath"
	"ferry/store"
)

// build runs an accepted build: on the machine of the connection's grant
// and, when that machine fails before the build is done (it cannot be
// reached, its session dies, it refuses the inputs), on another free one.
func (d *Daemon) build(ctx context.Context, c *conn, req *hookapi.BuildRequest) (*hookapi.BuildReply, error) {
	g := c.grant
	if g == nil {
		return nil, errors.New("build without an accepted try on this connection")
	}
	if req.DrvPath != g.req.DrvPath {
		return nil, fmt.Errorf("build of '%s' after a try of '%s'", req.DrvPath, g.req.DrvPath)
	}
	drv, err := g.local.ReadDerivation(ctx, req.DrvPath)
	if err != nil {
		return nil, err
	}
	lw := &lineWriter{send: func(line string) { c.send(&Response{Log: &line}) }}
	defer lw.Flush()
	start := time.Now()
	tried := map[string]bool{}
	for {
		tried[g.ms.m.URI] = true
		reply, me := d.buildOn(ctx, g, req.DrvPath, drv, lw)
		if me == nil {
			reply.Duration = time.Since(start)
			return reply, nil
		}
		uri := g.ms.m.URI
		next, err := d.pickWait(ctx, g.cands, g, tried)
		if err == nil && next != nil && ctx.Err() == nil {
			fmt.Fprintf(lw, "ferry scheduler: %v; building '%s' on '%s' instead\n", me, req.DrvPath, next.ms.m.URI)
			d.release(g)
			c.grant, g = next, next
			continue
		}
		if next != nil {
			d.release(next)
		}
		return &hookapi.BuildReply{Success: false, Machine: uri, Duration: time.Since(start),
			Message: fmt.Sprintf("build of '%s' on '%s' failed: %v", req.DrvPath, uri, me.Err)}, nil
	}
}

// buildOn builds drv on g's machine. A *remote.MachineError is the
// machine's failure (it is then backed off); every other outcome is the
// reply.
func (d *Daemon) buildOn(ctx context.Context, g *grant, p storepath.Path, drv *derivation.Derivation, lw *lineWriter) (*hookapi.BuildReply, *remote.MachineError) {
	ms := g.ms
	uri := ms.m.URI
	id := d.startBuild(&RunningBuild{DrvPath: p, Machine: uri, Store: g.req.Store, Started: time.Now()}, ms)
	defer d.endBuild(id)
	fail := func(msg string) *hookapi.BuildReply {
		d.metrics.failed.WithLabelValues(uri).Inc()
		d.mu.Lock()
		ms.failed++
		d.mu.Unlock()
		d.recordFailure(Failure{Time: time.Now(), DrvPath: p, Machine: uri, Message: msg})
		return &hookapi.BuildReply{Success: false, Machine: uri, Message: fmt.Sprintf("build of '%s' on '%s' failed: %s", p, uri, msg)}
	}
	s, err := g.sess, error(nil)
	g.sess = nil
	if s == nil {
		s, err = d.session(ctx, ms, g.local)
	}
	if err != nil {
		var me *remote.MachineError
		if errors.As(err, &me) {
			d.metrics.connectFailures.WithLabelValues(uri).Inc()
			fail(me.Err.Error())
			d.machineFailed(ms, me)
			return nil, me
		}
		return fail(err.Error()), nil
	}
	// The client is a build hook: the nix process that runs it holds the
	// outputs' path locks while it waits, so copying them back must not
	// take them again (Nix's locksHeld, as ferry build-hook does).
	var outs []storepath.Path
	for _, o := range drv.OutputPaths() {
		if o != "" {
			outs = append(outs, o)
		}
	}
	defer g.local.LocksHeld(outs...)()
	s.log.Set(lw)
	substitute, _ := settings.ParseBool("builders-use-substitutes", g.req.Settings["builders-use-substitutes"])
	step := &remote.Step{DrvPath: p, Drv: drv, Settings: buildSettings(g.req.Settings), Log: lw, Substitute: substitute,
		// Nix's upload lock of the machine, shared with build-remote
		// and ferry build-hook.
		Upload: remote.UploadLock(g.load, ms.m, d.opts.UploadWait, func(msg string) { d.say("%s", msg) }),
		Outputs: func(in storepath.Path) (map[string]storepath.Path, error) {
			d, err := g.local.ReadDerivation(ctx, in)
			if err != nil {
				return nil, err
			}
			return d.OutputPaths(), nil
		}}
	res, err := remote.BuildOn(ctx, g.local, uri, s.sess, step)
	s.log.Set(nil)
	if res != nil {
		d.metrics.bytesSent.WithLabelValues(uri).Add(float64(res.SentBytes))
	}
	var me *remote.MachineError
	switch {
	case errors.As(err, &me):
		s.sess.Close()
		fail(me.Err.Error())
		d.machineFailed(ms, me)
		return nil, me
	case err != nil:
		// The local store's error, or the client went away: the session
		// may be mid-request; closing it kills the remote builder.
		s.sess.Close()
		if ctx.Err() != nil {
			return fail("the client went away (its connection closed)"), nil
		}
		return fail(err.Error()), nil
	}
	d.putSession(ms, s)
	d.machineOK(ms)
	if !res.Result.Status.Success() {
		msg := res.Result.ErrorMsg
		if msg == "" {
			msg = res.Result.Status.String()
		}
		return fail(msg), nil
	}
	// Nix sent its experimental features: with ca-derivations, the
	// realisations of what was built.
	rs := settings.Default()
	rs.ExperimentalFeatures = strings.Fields(g.req.Settings["experimental-features"])
	if err := remote.RegisterRealisations(ctx, g.local, rs, p, drv, res.Outputs); err != nil {
		return fail(err.Error()), nil
	}
	var received uint64
	if infos, err := g.local.QueryPathInfos(ctx, res.Received); err == nil {
		for _, info := range infos {
			received += info.NarSize
		}
	}
	d.metrics.bytesReceived.WithLabelValues(uri).Add(float64(received))
	d.metrics.succeeded.WithLabelValues(uri).Inc()
	d.mu.Lock()
	ms.succeeded++
	if len(ms.holds) > maxHolds {
		ms.holds = map[storepath.Path]bool{}
	}
	for q := range g.inputs {
		ms.holds[q] = true
	}
	for _, q := range res.Received {
		ms.holds[q] = true
	}
	d.mu.Unlock()
	return &hookapi.BuildReply{Success: true, Machine: uri}, nil
}

// buildSettings are the limits of Nix's settings that travel with a build,
// by any of their names (the hook sends Nix's: max-build-log-size;
// ferry build sends max-log-size).
func buildSettings(s map[string]string) *store.BuildSettings {
	bs := &store.BuildSettings{}
	num := func(ks ...string) uint64 {
		for _, k := range ks {
			if n, err := strconv.ParseUint(s[k], 10, 64); err == nil && n != 0 {
				return n
			}
		}
		return 0
	}
	bs.MaxSilentTime = time.Duration(num("max-silent-time", "build-max-silent-time")) * time.Second
	bs.Timeout = time.Duration(num("timeout", "build-timeout")) * time.Second
	bs.MaxLogSize = num("max-build-log-size", "max-log-size")
	bs.BuildRepeat = num("repeat", "build-repeat")
	if b, err := settings.ParseBool("enforce-determinism", s["enforce-determinism"]); err == nil {
		bs.EnforceDeterminism = b
	}
	if b, err := settings.ParseBool("keep-failed", s["keep-failed"]); err == nil {
		bs.KeepFailed = b
	}
	return bs
}

// session is an idle session of ms, or a new one.
func (d *Daemon) session(ctx context.Context, ms *mstate, local *localstore.Store) (*session, error) {
	d.mu.Lock()
	if n := len(ms.idle); n > 0 {
		s := ms.idle[n-1]
		ms.idle = ms.idle[:n-1]
		d.mu.Unlock()
		return s, nil
	}
	d.mu.Unlock()
	sw := &remote.SwitchWriter{}
	st, err := d.opts.Open(ctx, ms.m.StoreURI(), &store.OpenOptions{Log: sw, BareLog: true, ConnectTimeout: d.opts.ConnectTimeout})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &remote.MachineError{Machine: ms.m.URI, Err: fmt.Errorf("cannot connect: %w", err)}
	}
	sess, ok := st.(remote.Session)
	if !ok {
		st.Close()
		return nil, &remote.MachineError{Machine: ms.m.URI, Err: errors.New("the store cannot build derivations")}
	}
	if st.Dir() != local.Dir() {
		st.Close()
		return nil, &remote.MachineError{Machine: ms.m.URI, Err: fmt.Errorf("its store directory is %s, the client's %s", st.Dir(), local.Dir())}
	}
	return &session{sess: sess, log: sw}, nil
}

// putSession keeps s for the machine's next build.
func (d *Daemon) putSession(ms *mstate, s *session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(ms.idle) >= int(ms.m.MaxJobs) || d.ctx.Err() != nil {
		s.sess.Close()
		return
	}
	ms.idle = append(ms.idle, s)
}

// machineFailed backs ms off: every later try skips it until the back-off
// ends, then one build probes it.
func (d *Daemon) machineFailed(ms *mstate, me *remote.MachineError) {
	d.mu.Lock()
	ms.failures++
	backoff := d.opts.BackoffBase
	for i := 1; i < ms.failures && backoff < d.opts.BackoffMax; i++ {
		backoff *= 2
	}
	if backoff > d.opts.BackoffMax {
		backoff = d.opts.BackoffMax
	}
	ms.downUntil = time.Now().Add(backoff)
	ms.lastErr = me.Err.Error()
	idle := ms.idle
	ms.idle = nil
	d.notify()
	d.mu.Unlock()
	for _, s := range idle {
		s.sess.Close()
	}
	d.say("machine '%s' is down (%v), retrying it in %s", ms.m.URI, me.Err, backoff)
	d.save()
}

// machineOK ends ms's back-off after a build that reached it.
func (d *Daemon) machineOK(ms *mstate) {
	d.mu.Lock()
	was := ms.failures
	ms.failures, ms.downUntil, ms.lastErr = 0, time.Time{}, ""
	d.mu.Unlock()
	if was > 0 {
		d.say("machine '%s' is up again", ms.m.URI)
		d.save()
	}
}

func (d *Daemon) startBuild(b *RunningBuild, ms *mstate) int {
	d.metrics.started.WithLabelValues(b.Machine).Inc()
	d.mu.Lock()
	d.nextID++
	id := d.nextID
	d.running[id] = b
	ms.started++
	d.mu.Unlock()
	d.save()
	d.mu.Lock()
	b.journaled = true
	d.mu.Unlock()
	return id
}

func (d *Daemon) endBuild(id int) {
	d.mu.Lock()
	delete(d.running, id)
	d.mu.Unlock()
	d.save()
}

func (d *Daemon) recordFailure(f Failure) {
	d.say("%s: %s", f.Machine, f.Message)
	d.mu.Lock()
	d.recent = append(d.recent, f)
	if len(d.recent) > maxRecent {
		d.recent = d.recent[len(d.recent)-maxRecent:]
	}
	d.mu.Unlock()
}

// Status is the daemon's state now.
func (d *Daemon) Status() *Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	st := &Status{PID: pid, Started: d.started, Now: now, Queue: d.queue, Clients: d.conns,
		Running: []RunningBuild{}, Recent: append([]Failure{}, d.recent...)}
	names := remote.MachineNames(d.machineList())
	for _, uri := range d.order {
		m := d.machines[uri]
		s := MachineStatus{URI: uri, Name: names[uri], Systems: m.m.Systems, MaxJobs: int(m.m.MaxJobs), InUse: m.inUse,
			Sessions: len(m.idle), Failures: m.failures, LastError: m.lastErr, Started: m.started, Succeeded: m.succeeded, Failed: m.failed}
		if m.downUntil.After(now) {
			s.Down, s.RetryIn = true, m.downUntil.Sub(now)
		}
		st.Machines = append(st.Machines, s)
	}
	for _, b := range d.running {
		if b.journaled {
			st.Running = append(st.Running, *b)
		}
	}
	sortRunning(st.Running)
	return st
}

// lineWriter sends what is written to it line by line.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	send func(string)
}

const maxLine = 64 << 10

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			if len(w.buf) > maxLine {
				w.send(string(w.buf))
				w.buf = w.buf[:0]
			}
			return len(p), nil
		}
		w.send(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// Flush sends a last line without its newline.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.send(string(w.buf))
		w.buf = nil
	}
}
