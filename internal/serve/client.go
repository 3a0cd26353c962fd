package serve

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"

	"ferry/nix/derivation"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// Client is the client end of one serve session (the role of Nix's
// LegacySSHStore): it speaks to a server on r and w, which are normally a
// remote `ferry serve` or `nix-store --serve` over ssh. A Client is not
// safe for concurrent use: the protocol has one command in flight.
type Client struct {
	r       *wire.Reader
	w       *wire.Writer
	dir     storepath.Dir
	version uint64 // the server's version word
}

// NewClient performs the handshake, advertising Version, and returns the
// client. dir is the store directory (storepath.DefaultDir normally).
func NewClient(r io.Reader, w io.Writer, dir storepath.Dir) (*Client, error) {
	c := &Client{r: wire.NewReader(bufio.NewReaderSize(r, 1<<16)), w: wire.NewWriter(w), dir: dir}
	v, err := ClientHandshake(c.r, c.w, Version)
	if err != nil {
		return nil, err
	}
	c.version = v
	return c, nil
}

// ServerVersion is the version word the server sent.
func (c *Client) ServerVersion() uint64 { return c.version }

// minor is the protocol minor the client uses: Nix 2.8's client gates on
// the server's minor (docs/protocol.md §2.3), capped at ours.
func (c *Client) minor() uint64 {
	if Minor(c.version) > Minor(Version) {
		return Minor(Version)
	}
	return Minor(c.version)
}

func (c *Client) effectiveVersion() uint64 { return 0x200 | c.minor() }

// QueryValidPaths asks which of paths are valid; with lock the server
// temp-roots them for the rest of the session.
func (c *Client) QueryValidPaths(paths []storepath.Path, lock, substitute bool) ([]storepath.Path, error) {
	if err := WriteCommand(c.w, CmdQueryValidPaths); err != nil {
		return nil, err
	}
	if err := WriteQueryValidPaths(c.w, &QueryValidPathsRequest{Lock: lock, Substitute: substitute, Paths: paths}); err != nil {
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return ReadPathSet(c.r, c.dir)
}

// QueryPathInfos returns the infos of the valid ones among paths.
func (c *Client) QueryPathInfos(paths []storepath.Path) ([]*store.PathInfo, error) {
	if err := WriteCommand(c.w, CmdQueryPathInfos); err != nil {
		return nil, err
	}
	if err := WritePathSet(c.w, paths); err != nil {
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	var infos []*store.PathInfo
	for {
		info, err := ReadPathInfo(c.r, c.dir, c.effectiveVersion())
		if err != nil {
			return nil, err
		}
		if info == nil {
			return infos, nil
		}
		infos = append(infos, info)
	}
}

// DumpStorePath copies the NAR of a valid path to w. The NAR is not
// length-prefixed on the wire, so it is delimited by parsing it.
func (c *Client) DumpStorePath(p storepath.Path, w io.Writer) error {
	if err := WriteCommand(c.w, CmdDumpStorePath); err != nil {
		return err
	}
	if err := WritePath(c.w, p); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	nr := nar.NewReader(io.TeeReader(c.r, w))
	for {
		_, err := nr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("dump %s: %w", p, err)
		}
		if _, err := io.Copy(io.Discard, nr); err != nil {
			return fmt.Errorf("dump %s: %w", p, err)
		}
	}
}

// AddToStoreNar uploads one path (proto >= 2.5); its references must be
// valid on the server already.
func (c *Client) AddToStoreNar(info *store.PathInfo, narData io.Reader) error {
	if c.minor() < 5 {
		return fmt.Errorf("add %s: server protocol %#x has no AddToStoreNar", info.Path, c.version)
	}
	if err := WriteCommand(c.w, CmdAddToStoreNar); err != nil {
		return err
	}
	if err := WriteAddToStoreNar(c.w, info); err != nil {
		return err
	}
	if _, err := io.Copy(c.w, narData); err != nil {
		return err
	}
	return c.w.Flush()
}

// BuildDerivation builds a BasicDerivation (no input derivations: their
// needed outputs are among its input sources) that the server need not
// have as a .drv file.
func (c *Client) BuildDerivation(drvPath storepath.Path, drv *derivation.Derivation, s *store.BuildSettings) (*BuildResult, error) {
	if err := WriteCommand(c.w, CmdBuildDerivation); err != nil {
		return nil, err
	}
	if err := WritePath(c.w, drvPath); err != nil {
		return nil, err
	}
	if err := WriteBasicDerivation(c.w, drv); err != nil {
		return nil, err
	}
	if s == nil {
		s = &store.BuildSettings{}
	}
	if err := WriteBuildSettings(c.w, c.effectiveVersion(), s); err != nil {
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return ReadBuildResult(c.r, c.dir, c.effectiveVersion())
}

// BasicDerivation turns a derivation into the BasicDerivation Nix sends:
// its input derivations are replaced by the outputs it uses from them,
// which become input sources. outputs gives each input derivation's
// output paths.
func BasicDerivation(d *derivation.Derivation, outputs func(storepath.Path) (map[string]storepath.Path, error)) (*derivation.Derivation, error) {
	b := d.Clone()
	seen := map[storepath.Path]bool{}
	for _, s := range b.InputSrcs {
		seen[s] = true
	}
	for drvPath, names := range d.InputDrvs {
		outs, err := outputs(drvPath)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			p, ok := outs[n]
			if !ok || p == "" {
				return nil, fmt.Errorf("input derivation %s has no known output %q", drvPath, n)
			}
			if !seen[p] {
				seen[p] = true
				b.InputSrcs = append(b.InputSrcs, p)
			}
		}
	}
	b.InputDrvs = nil
	// Sorted by full path, as a derivation keeps its input sources.
	sort.Slice(b.InputSrcs, func(i, j int) bool { return b.InputSrcs[i] < b.InputSrcs[j] })
	return b, nil
}
