// Package db owns the SQLite database of a Nix-compatible store
// (docs/store.md §5): the schema of Nix 2.8 (version 10), the connection
// setup Nix uses, the exact statements of local-store.cc, the column
// formats of §5.3 and the busy handling that lets ferry and real Nix
// share one database.
//
// It also owns the other files of <state>/db that Nix keeps beside the
// database: the schema file (ReadSchemaFile, WriteSchemaFile, CheckSchema;
// Open with Options.UpgradeFrom runs Nix 2.8's upgrades from schemas 6-9)
// and db/reserved (Reserve, Unreserve), the space a garbage collection
// frees first on a full disk.
//
// The SQL lives in embedded files under sql/. The driver is the pure-Go
// modernc.org/sqlite (docs/sqlite-driver.md says why).
//
// A DB holds a single connection, so transactions of one process never
// contend with each other inside SQLite; they queue in database/sql. Other
// processes (ferry or Nix) are handled by SQLite's busy timeout plus a retry
// loop around every transaction, as Nix's retrySQLite does.
package db

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"modernc.org/sqlite"

	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

// SchemaVersion is Nix's nixSchemaVersion, written to the schema file.
const SchemaVersion = 10

// Schema returns the text of schema.sql, executed verbatim on a new store.
func Schema() string { return mustSQL("schema") }

func mustSQL(name string) string {
	b, err := sqlFiles.ReadFile("sql/" + name + ".sql")
	if err != nil {
		panic("db: missing embedded sql/" + name + ".sql")
	}
	return strings.TrimSpace(string(b))
}

// The statements, by file name in sql/ (local-store.cc:328-360).
var statementNames = []string{
	"register_valid_path",
	"update_path_info",
	"add_reference",
	"query_path_info",
	"query_path_id",
	"query_references",
	"query_referrers",
	"invalidate_path",
	"add_derivation_output",
	"query_valid_derivers",
	"query_derivation_outputs",
	"query_path_from_hash_part",
	"query_valid_paths",
	// ferry's own, for bulk queries (QueryClosure, QueryPathInfos).
	"query_closure",
	"query_path_infos",
	"query_references_of",
	"query_valid_among",
}

// Options configure Open. The zero value opens an existing database.
type Options struct {
	// Create creates the database and its schema if db.sqlite does not
	// exist. The caller writes the schema file (WriteSchemaFile) after.
	Create bool
	// NoSync sets synchronous=off instead of normal (Nix's
	// fsync-metadata=false).
	NoSync bool
	// UpgradeFrom, when between MinSchemaVersion and SchemaVersion-1,
	// runs Nix 2.8's upgrade steps from that schema version before the
	// statements are prepared (see Upgrade). Zero means no upgrade. The
	// caller holds the big lock exclusively and writes the schema file
	// after.
	UpgradeFrom int
	// StoreDir is the logical store directory every path in the database
	// lies in; "" means storepath.DefaultDir.
	StoreDir storepath.Dir
}

// DB is an open store database. It is safe for concurrent use; its
// transactions are serialised on its single connection.
type DB struct {
	sql   *sql.DB
	stmts map[string]*sql.Stmt
	dir   storepath.Dir
}

// Open opens the database file path (normally <state>/db/db.sqlite) with
// the pragmas of §5.4.
func Open(path string, opts *Options) (*DB, error) {
	if opts == nil {
		opts = &Options{}
	}
	if !opts.Create {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open database %s: %w", path, err)
		}
	}
	sync := "normal"
	if opts.NoSync {
		sync = "off"
	}
	// Connection pragmas in Nix's order (busy timeout first; the driver
	// runs busy_timeout first and the rest sorted, which happens to be
	// foreign_keys, synchronous, wal_autocheckpoint). The journal mode is
	// persistent in the file, so it is checked once below and changed
	// only if it differs, as Nix does. Write transactions are "begin
	// immediate" so that a writer never has to upgrade a read snapshot,
	// which SQLite refuses with SQLITE_BUSY without waiting.
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(3600000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous("+sync+")")
	q.Add("_pragma", "wal_autocheckpoint(40000)")
	q.Set("_txlock", "immediate")
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	sdb.SetMaxOpenConns(1)
	sdb.SetMaxIdleConns(1)
	sdb.SetConnMaxLifetime(0)
	sdb.SetConnMaxIdleTime(0)
	d := &DB{sql: sdb, stmts: map[string]*sql.Stmt{}, dir: opts.StoreDir}
	if d.dir == "" {
		d.dir = storepath.DefaultDir
	}
	ctx := context.Background()
	if err := d.setup(ctx, opts.Create); err != nil {
		sdb.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if opts.UpgradeFrom != 0 {
		if err := d.upgrade(ctx, opts.UpgradeFrom); err != nil {
			sdb.Close()
			return nil, fmt.Errorf("open database %s: %w", path, err)
		}
	}
	for _, n := range statementNames {
		st, err := sdb.PrepareContext(ctx, mustSQL(n))
		if err != nil {
			sdb.Close()
			return nil, fmt.Errorf("open database %s: prepare %s: %w", path, n, err)
		}
		d.stmts[n] = st
	}
	return d, nil
}

func (d *DB) setup(ctx context.Context, create bool) error {
	return retry(ctx, func() error {
		var mode string
		if err := d.sql.QueryRowContext(ctx, "pragma main.journal_mode;").Scan(&mode); err != nil {
			return err
		}
		if !strings.EqualFold(mode, "wal") {
			if err := d.sql.QueryRowContext(ctx, "pragma main.journal_mode = wal;").Scan(&mode); err != nil {
				return err
			}
		}
		if create {
			var n int
			if err := d.sql.QueryRowContext(ctx, "select count(*) from sqlite_master where type = 'table' and name = 'ValidPaths'").Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				if _, err := d.sql.ExecContext(ctx, Schema()); err != nil {
					return fmt.Errorf("create schema: %w", err)
				}
			}
		}
		return nil
	})
}

// Close closes the database.
func (d *DB) Close() error {
	for _, st := range d.stmts {
		st.Close()
	}
	return d.sql.Close()
}

// isBusy reports whether err is SQLite telling us another connection holds
// a lock (SQLITE_BUSY, SQLITE_LOCKED, SQLITE_PROTOCOL and their extended
// codes), the cases Nix's retrySQLite retries.
func isBusy(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case 5, 6, 15:
		return true
	}
	return false
}

// retry runs fn until it succeeds, fails with something other than a busy
// database, or ctx ends. Like Nix it sleeps a random 0-100 ms in between.
func retry(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if err == nil || !isBusy(err) {
			return err
		}
		t := time.NewTimer(time.Duration(rand.IntN(100)) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (while the database was busy: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Tx is one transaction. It is valid only inside the function given to
// Read or Write, and not safe for concurrent use.
type Tx struct {
	ctx context.Context
	tx  *sql.Tx
	d   *DB
}

// Read runs fn in a read transaction ("begin" ... "commit"). fn may be
// run more than once when the database is busy, so it must only touch
// state it resets itself. Never call Read or Write from inside fn.
func (d *DB) Read(ctx context.Context, fn func(*Tx) error) error {
	return d.run(ctx, true, fn)
}

// Write runs fn in a write transaction ("begin immediate" ... "commit"),
// rolled back if fn fails. Like Read, fn may be retried.
func (d *DB) Write(ctx context.Context, fn func(*Tx) error) error {
	return d.run(ctx, false, fn)
}

func (d *DB) run(ctx context.Context, readOnly bool, fn func(*Tx) error) error {
	var fnErr error
	err := retry(ctx, func() error {
		fnErr = nil
		stx, err := d.sql.BeginTx(ctx, &sql.TxOptions{ReadOnly: readOnly})
		if err != nil {
			return err
		}
		if err := fn(&Tx{ctx: ctx, tx: stx, d: d}); err != nil {
			stx.Rollback()
			if isBusy(err) {
				return err
			}
			fnErr = err
			return nil
		}
		return stx.Commit()
	})
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	return fnErr
}

func (t *Tx) stmt(name string) *sql.Stmt { return t.tx.StmtContext(t.ctx, t.d.stmts[name]) }

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// PathID returns the ValidPaths id of p, and false if p is not valid.
func (t *Tx) PathID(p storepath.Path) (int64, bool, error) {
	var id int64
	err := t.stmt("query_path_id").QueryRowContext(t.ctx, string(p)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return id, true, nil
}

// IsValid reports whether p is registered.
func (t *Tx) IsValid(p storepath.Path) (bool, error) {
	_, ok, err := t.PathID(p)
	return ok, err
}

// QueryPathInfo returns the row of p with its references, or an error
// wrapping store.ErrNotValid.
func (t *Tx) QueryPathInfo(p storepath.Path) (*store.PathInfo, error) {
	var r infoRow
	err := t.stmt("query_path_info").QueryRowContext(t.ctx, string(p)).
		Scan(&r.id, &r.h, &r.regTime, &r.deriver, &r.narSize, &r.ultimate, &r.sigs, &r.ca)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("path '%s' %w", p, store.ErrNotValid)
	}
	if err != nil {
		return nil, err
	}
	info, err := r.info(p)
	if err != nil {
		return nil, err
	}
	if info.References, err = t.queryPaths("query_references", r.id); err != nil {
		return nil, err
	}
	return info, nil
}

// infoRow is one row of ValidPaths as the queries return it.
type infoRow struct {
	id       int64
	h        string
	regTime  int64
	deriver  sql.NullString
	narSize  sql.NullInt64
	ultimate sql.NullInt64
	sigs, ca sql.NullString
}

func (r *infoRow) info(p storepath.Path) (*store.PathInfo, error) {
	info := &store.PathInfo{
		Path:             p,
		RegistrationTime: time.Unix(r.regTime, 0),
		Ultimate:         r.ultimate.Valid && r.ultimate.Int64 != 0,
	}
	var err error
	if info.NarHash, err = hash.ParseAny(r.h, hash.SHA256); err != nil {
		return nil, fmt.Errorf("query path info of %s: bad hash column: %w", p, err)
	}
	if r.narSize.Valid && r.narSize.Int64 > 0 {
		info.NarSize = uint64(r.narSize.Int64)
	}
	if r.deriver.Valid && r.deriver.String != "" {
		// Nix 2.8 would throw on a bad deriver; an unreadable one is
		// reported as unknown instead.
		if dp, err := p.Dir().Parse(r.deriver.String); err == nil {
			info.Deriver = dp
		}
	}
	if r.sigs.Valid && r.sigs.String != "" {
		info.Sigs = strings.Fields(r.sigs.String)
	}
	if r.ca.Valid && r.ca.String != "" {
		if info.CA, err = storepath.ParseContentAddress(r.ca.String); err != nil {
			return nil, fmt.Errorf("query path info of %s: bad ca column: %w", p, err)
		}
	}
	return info, nil
}

// jsonPaths is the JSON array of paths the bulk queries take.
func jsonPaths(paths []storepath.Path) (string, error) {
	b, err := json.Marshal(paths)
	return string(b), err
}

// QueryPathInfos returns the rows of the valid ones among paths with
// their references, in two queries whatever their number.
func (t *Tx) QueryPathInfos(paths []storepath.Path) ([]*store.PathInfo, error) {
	arg, err := jsonPaths(paths)
	if err != nil {
		return nil, err
	}
	rows, err := t.stmt("query_path_infos").QueryContext(t.ctx, arg)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byID := map[int64]*store.PathInfo{}
	var infos []*store.PathInfo
	for rows.Next() {
		var r infoRow
		var path string
		if err := rows.Scan(&r.id, &path, &r.h, &r.regTime, &r.deriver, &r.narSize, &r.ultimate, &r.sigs, &r.ca); err != nil {
			return nil, err
		}
		p, err := t.d.dir.Parse(path)
		if err != nil {
			return nil, fmt.Errorf("database holds a bad store path: %w", err)
		}
		info, err := r.info(p)
		if err != nil {
			return nil, err
		}
		byID[r.id] = info
		infos = append(infos, info)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	refs, err := t.stmt("query_references_of").QueryContext(t.ctx, arg)
	if err != nil {
		return nil, err
	}
	defer refs.Close()
	for refs.Next() {
		var id int64
		var path string
		if err := refs.Scan(&id, &path); err != nil {
			return nil, err
		}
		p, err := t.d.dir.Parse(path)
		if err != nil {
			return nil, fmt.Errorf("database holds a bad store path: %w", err)
		}
		if info := byID[id]; info != nil {
			info.References = append(info.References, p)
		}
	}
	if err := refs.Err(); err != nil {
		return nil, err
	}
	for _, info := range infos {
		storepath.Sort(info.References)
	}
	return infos, nil
}

// ValidAmong returns the valid ones among paths, in one query, sorted.
func (t *Tx) ValidAmong(paths []storepath.Path) ([]storepath.Path, error) {
	arg, err := jsonPaths(paths)
	if err != nil {
		return nil, err
	}
	return t.queryPaths("query_valid_among", arg)
}

// QueryClosure returns the closure of paths under references, in one
// query, sorted. Invalid paths among paths are left out: the caller checks
// them.
func (t *Tx) QueryClosure(paths []storepath.Path) ([]storepath.Path, error) {
	arg, err := jsonPaths(paths)
	if err != nil {
		return nil, err
	}
	return t.queryPaths("query_closure", arg)
}

func (t *Tx) queryPaths(stmt string, args ...any) ([]storepath.Path, error) {
	rows, err := t.stmt(stmt).QueryContext(t.ctx, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storepath.Path
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		p, err := t.d.dir.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("database holds a bad store path: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	storepath.Sort(out)
	return out, nil
}

func infoArgs(info *store.PathInfo) (h string, narSize, ultimate any, sigs, ca sql.NullString) {
	h = info.NarHash.Encode(hash.Base16, true)
	if info.NarSize != 0 {
		narSize = int64(info.NarSize)
	}
	if info.Ultimate {
		ultimate = int64(1)
	}
	return h, narSize, ultimate, nullString(strings.Join(info.Sigs, " ")), nullString(info.CA.String())
}

// RegisterValidPath inserts the ValidPaths row of info (not its
// references) and returns its id. A zero RegistrationTime means now.
func (t *Tx) RegisterValidPath(info *store.PathInfo) (int64, error) {
	if info.NarHash.Algorithm() != hash.SHA256 {
		return 0, fmt.Errorf("register %s: nar hash must be sha256", info.Path)
	}
	h, narSize, ultimate, sigs, ca := infoArgs(info)
	rt := info.RegistrationTime
	if rt.IsZero() {
		rt = time.Now()
	}
	res, err := t.stmt("register_valid_path").ExecContext(t.ctx, string(info.Path), h, rt.Unix(),
		nullString(string(info.Deriver)), narSize, ultimate, sigs, ca)
	if err != nil {
		return 0, fmt.Errorf("register %s: %w", info.Path, err)
	}
	return res.LastInsertId()
}

// UpdatePathInfo rewrites narSize, hash, ultimate, sigs and ca of a valid
// path, as Nix does when re-registering it.
func (t *Tx) UpdatePathInfo(info *store.PathInfo) error {
	if info.NarHash.Algorithm() != hash.SHA256 {
		return fmt.Errorf("update %s: nar hash must be sha256", info.Path)
	}
	h, narSize, ultimate, sigs, ca := infoArgs(info)
	_, err := t.stmt("update_path_info").ExecContext(t.ctx, narSize, h, ultimate, sigs, ca, string(info.Path))
	if err != nil {
		return fmt.Errorf("update %s: %w", info.Path, err)
	}
	return nil
}

// AddReference records that referrer refers to reference (both ids).
func (t *Tx) AddReference(referrer, reference int64) error {
	_, err := t.stmt("add_reference").ExecContext(t.ctx, referrer, reference)
	return err
}

// QueryReferences returns the sorted references of the path with id.
func (t *Tx) QueryReferences(id int64) ([]storepath.Path, error) {
	return t.queryPaths("query_references", id)
}

// QueryReferrers returns the sorted valid paths that refer to p (p itself
// included if it refers to itself).
func (t *Tx) QueryReferrers(p storepath.Path) ([]storepath.Path, error) {
	return t.queryPaths("query_referrers", string(p))
}

// InvalidatePath deletes p's row; the schema's cascades and trigger drop
// its Refs and DerivationOutputs rows. It fails (foreign key constraint)
// if another valid path still refers to p.
func (t *Tx) InvalidatePath(p storepath.Path) error {
	_, err := t.stmt("invalidate_path").ExecContext(t.ctx, string(p))
	if err != nil {
		return fmt.Errorf("invalidate %s: %w", p, err)
	}
	return nil
}

// AddDerivationOutput records output id of the derivation with row drvID.
func (t *Tx) AddDerivationOutput(drvID int64, id string, p storepath.Path) error {
	_, err := t.stmt("add_derivation_output").ExecContext(t.ctx, drvID, id, string(p))
	return err
}

// QueryValidDerivers returns the sorted valid derivations that list p as
// an output.
func (t *Tx) QueryValidDerivers(p storepath.Path) ([]storepath.Path, error) {
	rows, err := t.stmt("query_valid_derivers").QueryContext(t.ctx, string(p))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storepath.Path
	for rows.Next() {
		var id int64
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			return nil, err
		}
		if dp, err := t.d.dir.Parse(s); err == nil {
			out = append(out, dp)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	storepath.Sort(out)
	return out, nil
}

// QueryDerivationOutputs returns the recorded outputs of the derivation
// with row drvID, by output name.
func (t *Tx) QueryDerivationOutputs(drvID int64) (map[string]storepath.Path, error) {
	rows, err := t.stmt("query_derivation_outputs").QueryContext(t.ctx, drvID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]storepath.Path{}
	for rows.Next() {
		var id, s string
		if err := rows.Scan(&id, &s); err != nil {
			return nil, err
		}
		p, err := t.d.dir.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("database holds a bad output path: %w", err)
		}
		out[id] = p
	}
	return out, rows.Err()
}

// QueryPathFromHashPart returns the valid path whose hash part is
// hashPart, and false if there is none.
func (t *Tx) QueryPathFromHashPart(dir storepath.Dir, hashPart string) (storepath.Path, bool, error) {
	if len(hashPart) != storepath.HashLen {
		return "", false, nil
	}
	prefix := string(dir) + "/" + hashPart
	var s string
	err := t.stmt("query_path_from_hash_part").QueryRowContext(t.ctx, prefix).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if !strings.HasPrefix(s, prefix) {
		return "", false, nil
	}
	p, err := t.d.dir.Parse(s)
	if err != nil {
		return "", false, nil
	}
	return p, true, nil
}

// QueryValidPaths returns every valid path, sorted.
func (t *Tx) QueryValidPaths() ([]storepath.Path, error) {
	rows, err := t.stmt("query_valid_paths").QueryContext(t.ctx)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []storepath.Path
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		// Rows Nix 2.8 accepted but current syntax rejects are skipped.
		if p, err := t.d.dir.Parse(s); err == nil {
			out = append(out, p)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}
