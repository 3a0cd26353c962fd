package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// URI is a parsed store URI, as Nix's --store, --to, --from and
// remote-store= take it: "ssh://user@host?remote-program=P", a directory,
// "local", "/" or "auto".
type URI struct {
	// Raw is the URI as given.
	Raw string
	// Scheme selects the implementation: "ssh", or "local" for a
	// directory, "local", "/", "auto" and "".
	Scheme string
	// Authority is what stands between "//" and the path or query
	// ("user@host:port"); Path is the rest before "?" (for "local" URIs,
	// everything before "?").
	Authority string
	Path      string
	// Params are the query parameters ("?a=b&c=d").
	Params url.Values
}

// String returns the URI as given.
func (u *URI) String() string { return u.Raw }

// ParseURI splits a store URI. It does not check that the scheme is known.
func ParseURI(raw string) (*URI, error) {
	u := &URI{Raw: raw, Params: url.Values{}}
	rest, query, hasQuery := strings.Cut(raw, "?")
	if hasQuery {
		vs, err := url.ParseQuery(query)
		if err != nil {
			return nil, fmt.Errorf("parse store URI %q: %w", raw, err)
		}
		u.Params = vs
	}
	scheme, after, ok := strings.Cut(rest, "://")
	if !ok {
		// A directory, "local", "/", "auto" or "": the local store.
		u.Scheme, u.Path = "local", rest
		return u, nil
	}
	if scheme == "" {
		return nil, fmt.Errorf("parse store URI %q: empty scheme", raw)
	}
	u.Scheme = scheme
	u.Authority, u.Path, _ = strings.Cut(after, "/")
	if u.Path != "" || strings.HasPrefix(after[len(u.Authority):], "/") {
		u.Path = "/" + u.Path
	}
	return u, nil
}

// OpenOptions are what every store implementation may need to be opened.
// A nil *OpenOptions means the zero value: each field documents it.
type OpenOptions struct {
	// Log receives what a store has to say while it works: a remote's
	// stderr, line by line with the host in front. Nil discards it.
	Log io.Writer
	// Verbose makes stores say more (which store was chosen, each protocol
	// step).
	Verbose bool
	// ConnectTimeout bounds how long a remote store may take to answer
	// the handshake. Zero means 10 s; a URI parameter overrides it.
	ConnectTimeout time.Duration
	// LazyHandshake lets a remote store send its first request in the
	// same round trip as the handshake: Open returns before the far side
	// has answered, and a peer that is not a serve peer (or does not
	// answer within ConnectTimeout) is reported by the first call, with
	// the error Open would have given. The zero value waits in Open.
	LazyHandshake bool
	// ReservedSize is the local store's gc-reserved-space (the size of
	// db/reserved): zero means Nix's default, negative an empty file.
	ReservedSize int64
}

// Opener opens the store a URI names. Implementations register one per
// scheme with Register.
type Opener func(ctx context.Context, u *URI, opts *OpenOptions) (Store, error)

var (
	openersMu sync.Mutex
	openers   = map[string]Opener{}
)

// Register makes Open use open for URIs with the given scheme. It is
// called from the init functions of store implementations; registering a
// scheme twice panics.
func Register(scheme string, open Opener) {
	openersMu.Lock()
	defer openersMu.Unlock()
	if _, dup := openers[scheme]; dup {
		panic("store: Register called twice for scheme " + scheme)
	}
	openers[scheme] = open
}

// Open opens the store that uri names with the implementation registered
// for its scheme. The caller closes it.
func Open(ctx context.Context, uri string, opts *OpenOptions) (Store, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &OpenOptions{}
	}
	openersMu.Lock()
	open := openers[u.Scheme]
	openersMu.Unlock()
	if open == nil {
		return nil, fmt.Errorf("open store %q: ferry does not support %s:// stores (it has %s)", uri, u.Scheme, strings.Join(Schemes(), ", "))
	}
	return open(ctx, u, opts)
}

// Schemes lists the registered schemes, sorted.
func Schemes() []string {
	openersMu.Lock()
	defer openersMu.Unlock()
	var ss []string
	for s := range openers {
		ss = append(ss, s)
	}
	sort.Strings(ss)
	return ss
}

// ErrUnsupported is returned (wrapped) when a store cannot do what was
// asked of it, e.g. garbage-collect a remote store.
var ErrUnsupported = errors.New("not supported by this store")

// Unsupported returns an error saying that the store named uri cannot do
// what; it wraps ErrUnsupported.
func Unsupported(uri, what string) error {
	return fmt.Errorf("store %q cannot %s: %w", uri, what, ErrUnsupported)
}
