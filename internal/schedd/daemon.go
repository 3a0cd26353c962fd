package schedd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"ferry/internal/hookapi"
	"ferry/internal/localstore"
	"ferry/internal/lock"
	"ferry/internal/machines"
	"ferry/internal/remote"
	"ferry/internal/schedule"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/store"

	// The machines are ssh:// stores.
	_ "ferry/internal/sshstore"
)

// Options configure a Daemon.
type Options struct {
	// StateDir holds the socket, the lock file and the state file.
	StateDir string
	// Machines are the daemon's own machines (--builders/--machines),
	// used for a try whose Builders is empty.
	Machines []*machines.Machine
	// ConnectTimeout bounds opening a session; zero means 10 s.
	ConnectTimeout time.Duration
	// BackoffBase is the first back-off of a machine that failed (default
	// 10 s), doubling per consecutive failure up to BackoffMax (10 min).
	BackoffBase, BackoffMax time.Duration
	// QueueWait is how long a try that finds every suitable machine busy
	// (and may not build locally) waits for a slot before the answer is
	// postpone; zero means 2 s, negative not at all.
	QueueWait time.Duration
	// MetricsAddr, if set, is the loopback host:port of the Prometheus
	// endpoint (/metrics); port 0 picks one (MetricsAddr()).
	MetricsAddr string
	// Open opens stores; nil means store.Open.
	Open func(ctx context.Context, uri string, opts *store.OpenOptions) (store.Store, error)
	// Log receives what an operator should know (machines down and up,
	// builds failed). Nil discards it.
	Log io.Writer
	// TrustedUsers are trusted-users: who may build through the
	// scheduler besides root and its own user (internal/schedd/peer.go).
	TrustedUsers []string
	// UploadWait is how long a build waits for the machine's upload lock
	// before it goes on without it; zero means Nix's 15 minutes.
	UploadWait time.Duration
	// IdleExit, if positive, ends Serve once no client has been
	// connected for that long: a scheduler started on demand by a build
	// hook goes away when the builds are over.
	IdleExit time.Duration
}

// Daemon is a running scheduler.
type Daemon struct {
	opts    Options
	system  string
	started time.Time
	ctx     context.Context
	cancel  context.CancelFunc

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced when a slot frees or a machine changes
	machines   map[string]*mstate
	order      []string // machine URIs, in the order they were added
	configured []*mstate
	health     map[string]savedMachine // persisted health of machines not (yet) in the pool
	running    map[int]*RunningBuild
	nextID     int
	recent     []Failure
	queue      int
	conns      int
	lastConn   time.Time // when a client last came or went (IdleExit)

	clientsMu sync.Mutex
	clients   map[string]*clientEntry
	loads     map[string]*machines.Load

	metrics  *metrics
	lockFile *os.File
	ln       net.Listener
	httpLn   net.Listener
	httpSrv  *http.Server
	wg       sync.WaitGroup
	saveMu   sync.Mutex
	logMu    sync.Mutex
}

// mstate is one machine of the pool.
type mstate struct {
	m         *machines.Machine
	inUse     int
	idle      []*session
	failures  int // consecutive
	downUntil time.Time
	lastErr   string
	probing   bool                    // a build is probing it after a back-off
	holds     map[storepath.Path]bool // paths it has: sent to it or built there
	started   uint64
	succeeded uint64
	failed    uint64
}

type session struct {
	sess remote.Session
	log  *remote.SwitchWriter
}

type clientEntry struct {
	once sync.Once
	st   *localstore.Store
	err  error
}

// maxHolds bounds the paths remembered per machine for locality.
const maxHolds = 100000

// maxRecent is how many failures Status keeps.
const maxRecent = 20

// Listen takes the state directory's lock (one daemon per state
// directory: ErrRunning if another holds it), reloads the state a
// previous daemon left, and listens on the socket and, if asked, the
// metrics address. Serve then answers clients.
func Listen(opts Options) (*Daemon, error) {
	if opts.StateDir == "" {
		return nil, errors.New("the scheduler needs a state directory")
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = 10 * time.Second
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 10 * time.Minute
	}
	if opts.QueueWait == 0 {
		opts.QueueWait = 2 * time.Second
	}
	if opts.Open == nil {
		opts.Open = store.Open
	}
	if err := os.MkdirAll(opts.StateDir, 0o755); err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, system: settings.Default().System, started: time.Now(), lastConn: time.Now(), changed: make(chan struct{}),
		machines: map[string]*mstate{}, health: map[string]savedMachine{}, running: map[int]*RunningBuild{},
		clients: map[string]*clientEntry{}, loads: map[string]*machines.Load{}}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.metrics = newMetrics(d)

	lf, err := lock.OpenLockFile(lockPath(opts.StateDir))
	if err != nil {
		return nil, err
	}
	ok, err := lock.TryFlock(lf, lock.Exclusive)
	if err != nil || !ok {
		lf.Close()
		if err == nil {
			err = fmt.Errorf("%w: %s is locked by another ferry scheduler", ErrRunning, lockPath(opts.StateDir))
		}
		return nil, err
	}
	d.lockFile = lf
	fail := func(err error) (*Daemon, error) {
		d.closeListeners()
		return nil, err
	}
	if err := d.load(); err != nil {
		return fail(err)
	}
	for _, m := range opts.Machines {
		if _, dup := d.machines[m.URI]; dup {
			return fail(fmt.Errorf("machine '%s' is listed twice (%s:%d)", m.URI, m.Source, m.Line))
		}
		d.configured = append(d.configured, d.addMachine(m))
	}
	sock := SocketPath(opts.StateDir)
	os.Remove(sock) // a stale socket: we hold the lock, so no daemon serves it
	if d.ln, err = net.Listen("unix", sock); err != nil {
		return fail(err)
	}
	if err := os.Chmod(sock, 0o660); err != nil {
		return fail(err)
	}
	if opts.MetricsAddr != "" {
		if err := checkLoopback(opts.MetricsAddr); err != nil {
			return fail(err)
		}
		if d.httpLn, err = net.Listen("tcp", opts.MetricsAddr); err != nil {
			return fail(err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
		d.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go d.httpSrv.Serve(d.httpLn)
	}
	d.save()
	return d, nil
}

// ErrRunning says another scheduler holds the state directory.
var ErrRunning = errors.New("a ferry scheduler is already running")

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address '%s': %v", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("metrics address '%s' is not a loopback address (127.0.0.1:PORT or [::1]:PORT): the endpoint has no authentication", addr)
	}
	return nil
}

// SocketPath is the socket the daemon listens on.
func (d *Daemon) SocketPath() string { return SocketPath(d.opts.StateDir) }

// MetricsAddr is the metrics endpoint's address, "" without one.
func (d *Daemon) MetricsAddr() string {
	if d.httpLn == nil {
		return ""
	}
	return d.httpLn.Addr().String()
}

func (d *Daemon) closeListeners() {
	if d.ln != nil {
		d.ln.Close()
	}
	if d.httpSrv != nil {
		d.httpSrv.Close()
	} else if d.httpLn != nil {
		d.httpLn.Close()
	}
	if d.lockFile != nil {
		d.lockFile.Close()
	}
}

// Serve answers clients until ctx ends; then it ends every connection
// (cancelling their builds, which kills the remote builders), closes the
// sessions and the stores, and removes the socket.
func (d *Daemon) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { d.cancel(); d.ln.Close() })
	defer stop()
	if d.opts.IdleExit > 0 {
		go d.exitWhenIdle()
	}
	var err error
	for {
		nc, aerr := d.ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil && d.ctx.Err() == nil {
				err = aerr
			}
			break
		}
		d.wg.Add(1)
		go d.serveConn(nc)
	}
	d.cancel()
	d.wg.Wait()
	d.mu.Lock()
	for _, ms := range d.machines {
		for _, s := range ms.idle {
			s.sess.Close()
		}
		ms.idle = nil
	}
	d.mu.Unlock()
	d.clientsMu.Lock()
	for _, c := range d.clients {
		if c.st != nil {
			c.st.Close()
		}
	}
	d.clientsMu.Unlock()
	d.save()
	os.Remove(d.SocketPath())
	d.closeListeners()
	return err
}

// exitWhenIdle ends Serve (cancelling the daemon and closing its
// listener) once no client has been connected for IdleExit.
func (d *Daemon) exitWhenIdle() {
	tick := time.NewTicker(min(d.opts.IdleExit/4+time.Millisecond, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
		d.mu.Lock()
		idle := d.conns == 0 && time.Since(d.lastConn) >= d.opts.IdleExit
		d.mu.Unlock()
		if idle {
			d.say("no client for %s: exiting", d.opts.IdleExit)
			d.cancel()
			d.ln.Close()
			return
		}
	}
}

func (d *Daemon) say(format string, a ...any) {
	if d.opts.Log == nil {
		return
	}
	d.logMu.Lock()
	defer d.logMu.Unlock()
	fmt.Fprintf(d.opts.Log, "ferry scheduler: "+format+"\n", a...)
}

// notify wakes the tries waiting for a slot. The caller holds d.mu.
func (d *Daemon) notify() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// addMachine puts m into the pool, with any health a previous daemon
// saved for it. The caller holds d.mu or is Listen.
func (d *Daemon) addMachine(m *machines.Machine) *mstate {
	ms := &mstate{m: m, holds: map[storepath.Path]bool{}}
	if h, ok := d.health[m.URI]; ok {
		ms.failures, ms.downUntil, ms.lastErr = h.Failures, h.DownUntil, h.LastError
		delete(d.health, m.URI)
	}
	d.machines[m.URI] = ms
	d.order = append(d.order, m.URI)
	return ms
}

// candidates are the machines a try may use: those of its Builders
// (added to the pool by URI; a URI already in it keeps its first
// definition), else the daemon's own.
func (d *Daemon) candidates(req *hookapi.TryRequest) ([]*mstate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if req.Builders == "" {
		return append([]*mstate(nil), d.configured...), nil
	}
	ms, err := machines.Parse(req.Builders, d.system)
	if err != nil {
		return nil, err
	}
	var out []*mstate
	seen := map[string]bool{}
	for _, m := range ms {
		if seen[m.URI] {
			continue
		}
		seen[m.URI] = true
		st := d.machines[m.URI]
		if st == nil {
			st = d.addMachine(m)
		}
		out = append(out, st)
	}
	return out, nil
}

// client opens (once) the client's store, from which inputs are copied
// and into which outputs go.
func (d *Daemon) client(ctx context.Context, uri string) (*localstore.Store, error) {
	d.clientsMu.Lock()
	e := d.clients[uri]
	if e == nil {
		e = &clientEntry{}
		d.clients[uri] = e
	}
	d.clientsMu.Unlock()
	e.once.Do(func() {
		st, err := d.opts.Open(ctx, uri, &store.OpenOptions{Log: d.opts.Log})
		if err != nil {
			e.err = err
			return
		}
		ls, ok := st.(*localstore.Store)
		if !ok {
			st.Close()
			e.err = fmt.Errorf("the client store '%s' is not a local store on this machine", uri)
			return
		}
		e.st = ls
	})
	if e.err != nil {
		d.clientsMu.Lock()
		if d.clients[uri] == e {
			delete(d.clients, uri) // try again next time
		}
		d.clientsMu.Unlock()
		return nil, fmt.Errorf("open the client store '%s': %w", uri, e.err)
	}
	return e.st, nil
}

// loadFor is Nix's current-load directory of a client store.
func (d *Daemon) loadFor(st *localstore.Store) (*machines.Load, error) {
	d.clientsMu.Lock()
	defer d.clientsMu.Unlock()
	if l := d.loads[st.StateDir()]; l != nil {
		return l, nil
	}
	l, err := machines.OpenLoad(st.StateDir())
	if err != nil {
		return nil, err
	}
	d.loads[st.StateDir()] = l
	return l, nil
}

// grant is a slot held for one connection between an accept and its
// release.
type grant struct {
	ms   *mstate
	slot *machines.Slot
	// sess is the session opened (or taken idle) for the grant before
	// its accept; its build uses it.
	sess   *session
	probe  bool
	local  *localstore.Store
	load   *machines.Load
	req    *hookapi.TryRequest
	cands  []*mstate
	inputs map[storepath.Path]uint64
}

func schedMachine(m *machines.Machine) schedule.Machine {
	return schedule.Machine{ID: m.URI, Systems: m.Systems, SupportedFeatures: m.SupportedFeatures,
		MandatoryFeatures: m.MandatoryFeatures, MaxJobs: int(m.MaxJobs), SpeedFactor: float64(m.SpeedFactor)}
}

// bandwidth and defaultBuild weigh locality against load in pick, as
// internal/schedule's defaults do.
const (
	bandwidth    = 50e6
	defaultBuild = 60.0 // seconds
)

// pick chooses a machine among cands for req and takes a slot of it, in
// the daemon's accounting and in Nix's slot locks; nil if none is free.
// rightType says whether any of cands could build it at all.
func (d *Daemon) pick(cands []*mstate, g0 *grant, skip map[string]bool) (g *grant, rightType bool, err error) {
	g, rightType, _, err = d.pickBusy(cands, g0, skip)
	return g, rightType, err
}

// pickBusy is pick, also saying whether a suitable machine, neither
// skipped nor down, had every slot busy.
func (d *Daemon) pickBusy(cands []*mstate, g0 *grant, skip map[string]bool) (g *grant, rightType, busy bool, err error) {
	req := g0.req
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	type cand struct {
		ms   *mstate
		cost float64
		idx  int
	}
	var list []cand
	for i, ms := range cands {
		if !schedule.CanBuild(schedMachine(ms.m), req.System, req.Features) {
			continue
		}
		rightType = true
		if skip[ms.m.URI] || ms.downUntil.After(now) || ms.failures > 0 && ms.probing {
			continue
		}
		if ms.inUse >= int(ms.m.MaxJobs) {
			busy = true
			continue
		}
		var missing uint64
		for p, size := range g0.inputs {
			if !ms.holds[p] {
				missing += size
			}
		}
		speed := float64(ms.m.SpeedFactor)
		if speed < 1 {
			speed = 1
		}
		cost := float64(missing)/bandwidth + defaultBuild*float64(ms.inUse+1)/(speed*float64(ms.m.MaxJobs))
		list = append(list, cand{ms, cost, i})
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].cost < list[j].cost })
	for _, c := range list {
		slot, err := g0.load.TryAcquire(c.ms.m)
		if err != nil {
			return nil, rightType, busy, err
		}
		if slot == nil {
			busy = true
			continue // another process (nix-build with Nix's hook) holds every slot
		}
		c.ms.inUse++
		g := *g0
		g.ms, g.slot, g.probe = c.ms, slot, c.ms.failures > 0
		if g.probe {
			c.ms.probing = true
		}
		return &g, true, busy, nil
	}
	return nil, rightType, busy, nil
}

// pickWait is pick for a build whose machine failed after Nix was told
// "# accept": it waits while the machines left are only busy, and gives
// nil when none is left that is not down or already tried.
func (d *Daemon) pickWait(ctx context.Context, cands []*mstate, g0 *grant, skip map[string]bool) (*grant, error) {
	for {
		d.mu.Lock()
		changed := d.changed
		d.mu.Unlock()
		g, _, busy, err := d.pickBusy(cands, g0, skip)
		if err != nil || g != nil || !busy {
			return g, err
		}
		if err := waitChange(ctx, changed); err != nil {
			return nil, err
		}
	}
}

// waitChange waits for changed to close (a slot freed, a machine
// changed) or, since Nix's slot locks free without telling us, 200 ms.
func waitChange(ctx context.Context, changed <-chan struct{}) error {
	t := time.NewTimer(200 * time.Millisecond)
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// release frees g's slot.
func (d *Daemon) release(g *grant) {
	if g == nil {
		return
	}
	if s := g.sess; s != nil {
		g.sess = nil
		d.putSession(g.ms, s)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	g.ms.inUse--
	if g.probe {
		g.ms.probing = false
	}
	g.slot.Release()
	d.notify()
}

// inputSizes is the input closure of drv in the client store with NAR
// sizes, for locality; nil if it cannot be read.
func inputSizes(ctx context.Context, local *localstore.Store, drv storepath.Path) map[storepath.Path]uint64 {
	d, err := local.ReadDerivation(ctx, drv)
	if err != nil {
		return nil
	}
	paths := append([]storepath.Path(nil), d.InputSrcs...)
	for p, names := range d.InputDrvs {
		in, err := local.ReadDerivation(ctx, p)
		if err != nil {
			continue
		}
		outs := in.OutputPaths()
		for _, n := range names {
			if o, ok := outs[n]; ok {
				paths = append(paths, o)
			}
		}
	}
	valid, err := local.QueryValidPaths(ctx, paths)
	if err != nil || len(valid) == 0 {
		return nil
	}
	closure, err := local.QueryClosure(ctx, valid, false)
	if err != nil {
		return nil
	}
	infos, err := local.QueryPathInfos(ctx, closure)
	if err != nil {
		return nil
	}
	m := make(map[storepath.Path]uint64, len(infos))
	for _, info := range infos {
		m[info.Path] = info.NarSize
	}
	return m
}

// conn is one client connection.
type conn struct {
	nc    net.Conn
	wmu   sync.Mutex
	grant *grant
}

func (c *conn) send(r *Response) {
	b, err := json.Marshal(r)
	if err != nil {
		b, _ = json.Marshal(&Response{Error: err.Error()})
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Minute))
	c.nc.Write(append(b, '\n'))
}

func (d *Daemon) serveConn(nc net.Conn) {
	defer d.wg.Done()
	ctx, cancel := context.WithCancel(d.ctx)
	defer cancel()
	c := &conn{nc: nc}
	d.mu.Lock()
	d.conns++
	d.lastConn = time.Now()
	d.mu.Unlock()
	defer func() {
		d.release(c.grant)
		nc.Close()
		d.mu.Lock()
		d.conns--
		d.lastConn = time.Now()
		d.mu.Unlock()
	}()
	reqs := make(chan []byte)
	go func() {
		// The reader: a closed connection cancels what runs for it.
		defer cancel()
		defer close(reqs)
		r := bufio.NewReaderSize(nc, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			select {
			case reqs <- line:
			case <-ctx.Done():
				return
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() { nc.SetReadDeadline(time.Now()) })
	defer stop()
	denied := ""
	if p, err := peerOf(nc); err != nil {
		denied = fmt.Sprintf("cannot tell who is connecting: %v", err)
	} else if !trusted(p, d.opts.TrustedUsers) {
		denied = refusal(p)
	}
	for line := range reqs {
		var req Request
		if err := json.Unmarshal(line, &req); err != nil {
			c.send(&Response{Error: fmt.Sprintf("bad request: %v", err)})
			return
		}
		if req.V != Protocol {
			c.send(&Response{Error: fmt.Sprintf("protocol version %d, the scheduler speaks %d (restart it with this ferry)", req.V, Protocol)})
			return
		}
		if denied != "" && req.Op != "status" {
			c.send(&Response{Error: denied})
			return
		}
		switch req.Op {
		case "try":
			if req.Try == nil {
				c.send(&Response{Error: "try without its request"})
				return
			}
			reply, err := d.try(ctx, c, req.Try)
			if err != nil {
				c.send(&Response{Error: err.Error()})
				continue
			}
			c.send(&Response{Try: reply})
		case "build":
			if req.Build == nil {
				c.send(&Response{Error: "build without its request"})
				return
			}
			reply, err := d.build(ctx, c, req.Build)
			if err != nil {
				c.send(&Response{Error: err.Error()})
				continue
			}
			c.send(&Response{Build: reply})
		case "release":
			d.release(c.grant)
			c.grant = nil
			c.send(&Response{Released: true})
		case "status":
			c.send(&Response{Status: d.Status()})
		default:
			c.send(&Response{Error: fmt.Sprintf("unknown op %q", req.Op)})
			return
		}
	}
}

// try answers a "try": Accept with a slot held, or why not.
func (d *Daemon) try(ctx context.Context, c *conn, req *hookapi.TryRequest) (*hookapi.TryReply, error) {
	d.release(c.grant) // a new try on the same connection replaces the last
	c.grant = nil
	cands, err := d.candidates(req)
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return &hookapi.TryReply{Decision: hookapi.DeclinePermanently,
			Message: "the ferry scheduler has no build machines (start it with --builders or --machines, or set builders)"}, nil
	}
	local, err := d.client(ctx, req.Store)
	if err != nil {
		return nil, err
	}
	load, err := d.loadFor(local)
	if err != nil {
		return nil, err
	}
	g0 := &grant{local: local, load: load, req: req, cands: cands, inputs: inputSizes(ctx, local, req.DrvPath)}
	t0 := time.Now()
	queued := false
	defer func() {
		if queued {
			d.mu.Lock()
			d.queue--
			d.mu.Unlock()
		}
	}()
	for {
		d.mu.Lock()
		changed := d.changed
		d.mu.Unlock()
		g, rightType, err := d.pick(cands, g0, nil)
		if err != nil {
			return nil, err
		}
		if g != nil {
			// Connected before the accept, as Nix's build-remote does,
			// so that the machine Nix then names ("building … on …") is
			// one that answers: one that does not is backed off and
			// another picked. The session is the grant's own, so a
			// machine never has more sessions than slots.
			sess, err := d.session(ctx, g.ms, local)
			var me *remote.MachineError
			if errors.As(err, &me) {
				d.metrics.connectFailures.WithLabelValues(g.ms.m.URI).Inc()
				d.machineFailed(g.ms, me)
				d.release(g)
				continue
			}
			if err != nil {
				d.release(g)
				return nil, err
			}
			g.sess = sess
			d.metrics.queueWait.Observe(time.Since(t0).Seconds())
			c.grant = g
			return &hookapi.TryReply{Decision: hookapi.Accept, Machine: g.ms.m.URI}, nil
		}
		if !rightType {
			return &hookapi.TryReply{Decision: hookapi.Decline, Message: noMachine(req, cands)}, nil
		}
		if req.AmWilling {
			return &hookapi.TryReply{Decision: hookapi.Decline}, nil
		}
		if d.opts.QueueWait < 0 || time.Since(t0) >= d.opts.QueueWait {
			d.metrics.queueWait.Observe(time.Since(t0).Seconds())
			return &hookapi.TryReply{Decision: hookapi.Postpone}, nil
		}
		if !queued {
			queued = true
			d.mu.Lock()
			d.queue++
			d.mu.Unlock()
		}
		if err := waitChange(ctx, changed); err != nil {
			return nil, err
		}
	}
}

// noMachine is Nix's "Failed to find a machine for remote build!" text
// (build-remote.cc@2.8.0).
func noMachine(req *hookapi.TryRequest, cands []*mstate) string {
	s := fmt.Sprintf("Failed to find a machine for remote build!\nderivation: %s\nrequired (system, features): (%s, %s)\n%d available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)",
		req.DrvPath.Base(), req.System, strings.Join(req.Features, ", "), len(cands))
	for _, ms := range cands {
		s += fmt.Sprintf("\n(%s, %d, %s, %s)", strings.Join(ms.m.Systems, ", "), ms.m.MaxJobs, strings.Join(ms.m.SupportedFeatures, ", "), strings.Join(ms.m.MandatoryFeatures, ", "))
	}
	return s
}
