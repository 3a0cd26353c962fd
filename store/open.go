package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"ferry/nix/storepath"
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
	// Params are the query parameters ("?a=b&c=d"), decoded as Nix's
	// decodeQuery does (src/libutil/url.cc@2.8.0): split at "&", each at
	// its first "=", the value percent-decoded ("+" stays "+"), an item
	// without "=" ignored, and the first of repeated keys kept.
	Params map[string]string
}

// String returns the URI as given.
func (u *URI) String() string { return u.Raw }

// ParseURI splits a store URI. It does not check that the scheme is known.
func ParseURI(raw string) (*URI, error) {
	u := &URI{Raw: raw, Params: map[string]string{}}
	rest, query, hasQuery := strings.Cut(raw, "?")
	if hasQuery {
		for _, item := range strings.Split(query, "&") {
			k, v, ok := strings.Cut(item, "=")
			if !ok {
				continue
			}
			dv, err := url.PathUnescape(v)
			if err != nil {
				return nil, fmt.Errorf("parse store URI %q: invalid URI parameter '%s'", raw, v)
			}
			if _, dup := u.Params[k]; !dup {
				u.Params[k] = dv
			}
		}
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
	// BareLog passes a remote's stderr on as it comes, without the
	// host's name in front of each line (as Nix's ssh store does); a relay
	// uses it, so that the client sees what it would see without one.
	BareLog bool
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
// for its scheme; "" and "auto" mean DefaultURI's. The caller closes it.
func Open(ctx context.Context, uri string, opts *OpenOptions) (Store, error) {
	uri, _ = DefaultURI(uri)
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

// EnvDir is the logical store directory a store takes when its URI sets
// none: $NIX_STORE_DIR, else $NIX_STORE, else /nix/store, as Nix's
// settings.nixStore (src/libstore/globals.cc@2.8.0).
func EnvDir() (storepath.Dir, error) {
	for _, k := range []string{"NIX_STORE_DIR", "NIX_STORE"} {
		if v, ok := os.LookupEnv(k); ok {
			p, err := AbsPathParam(k, v)
			return storepath.Dir(p), err
		}
	}
	return storepath.DefaultDir, nil
}

// StoreDirParam is the logical store directory a URI names with store=,
// else EnvDir's.
func (u *URI) StoreDirParam() (storepath.Dir, error) {
	if v, ok := u.Params["store"]; ok {
		p, err := AbsPathParam("store", v)
		if err != nil {
			return "", err
		}
		return storepath.Dir(p), nil
	}
	return EnvDir()
}

// AbsPathParam checks and cleans the path a setting or URI parameter
// called name gives, as Nix's PathSetting does (canonPath): it must be
// absolute and not empty. The errors are Nix's words.
func AbsPathParam(name, v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("setting '%s' cannot be empty", name)
	}
	if !strings.HasPrefix(v, "/") {
		return "", fmt.Errorf("not an absolute path: '%s'", v)
	}
	return path.Clean(v), nil
}

// DefaultURI is the store URI to use for uri: uri itself, unless it is ""
// or "auto", which mean $FERRY_STORE, else $NIX_REMOTE (Nix's default
// store-uri, src/libstore/globals.cc@2.8.0), else "auto". why names the
// variable that decided, "" if none did.
func DefaultURI(uri string) (resolved, why string) {
	if uri != "" && uri != "auto" {
		return uri, ""
	}
	for _, k := range []string{"FERRY_STORE", "NIX_REMOTE"} {
		if v := os.Getenv(k); v != "" && v != "auto" {
			return v, k + "=" + v
		}
	}
	return uri, ""
}
