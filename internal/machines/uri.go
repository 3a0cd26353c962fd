package machines

import (
	"sort"
	"strings"
)

// OpenParams are the store parameters Nix 2.8's Machine::openStore
// (src/libstore/machines.cc@2.8.0) passes with the URI: for ssh://,
// max-connections=1 and log-fd=4; for ssh:// and ssh-ng://, ssh-key and
// base64-ssh-public-host-key when set; for every store, system-features,
// supported then mandatory features joined by spaces (possibly empty).
func (m *Machine) OpenParams() map[string]string {
	p := map[string]string{}
	ssh := strings.HasPrefix(m.URI, "ssh://")
	if ssh {
		p["max-connections"] = "1"
		p["log-fd"] = "4"
	}
	if ssh || strings.HasPrefix(m.URI, "ssh-ng://") {
		if m.SSHKey != "" {
			p["ssh-key"] = m.SSHKey
		}
		if m.PublicHostKey != "" {
			p["base64-ssh-public-host-key"] = m.PublicHostKey
		}
	}
	p["system-features"] = strings.Join(append(append([]string(nil), m.SupportedFeatures...), m.MandatoryFeatures...), " ")
	return p
}

// internalParams are the OpenParams that only mean something inside Nix's
// build-remote: log-fd=4 is the hook's fd 4 (the parent's build log), and
// max-connections=1 is ferry's ssh store's only mode. StoreURI leaves them
// out; ferry's ssh store would accept and ignore them.
var internalParams = map[string]bool{"max-connections": true, "log-fd": true}

// StoreURI is the URI of the store Nix's Machine::openStore opens, for
// store.Open: URI with OpenParams but max-connections and log-fd. As in
// Nix's openStore(uri, params) (src/libstore/store-api.cc@2.8.0), which
// inserts the URI's query into the params map without replacing keys,
// the machine's parameters win over the URI's own: a "system-features=" or
// "ssh-key=" in the URI's query is dropped for the machine's. The URI's
// other query items are kept as written, in order; an item without "="
// (which Nix ignores) is dropped. The added values are percent-encoded
// where store.ParseURI would otherwise misread them.
func (m *Machine) StoreURI() string {
	params := m.OpenParams()
	for k := range internalParams {
		delete(params, k)
	}
	base, query, _ := strings.Cut(m.URI, "?")
	var items []string
	for _, item := range strings.Split(query, "&") {
		k, _, ok := strings.Cut(item, "=")
		if !ok {
			continue
		}
		if _, mine := params[k]; mine {
			continue
		}
		items = append(items, item)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		items = append(items, k+"="+escape(params[k]))
	}
	return base + "?" + strings.Join(items, "&")
}

// escape percent-encodes what would end or corrupt a query value: "%",
// "&", "#", white space and control or non-ASCII bytes.
func escape(v string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '%' || c == '&' || c == '#' || c <= ' ' || c >= 0x7f {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
