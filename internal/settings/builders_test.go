package settings

import "testing"

// TestBuilders: the builders default as Nix 2.8.0 computes it
// (src/libstore/globals.cc, globals.hh) and the two settings as nix.conf
// sets them.
func TestBuilders(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{nil, "@/etc/nix/machines"},
		{map[string]string{"NIX_CONF_DIR": "/opt/nix//conf/"}, "@/opt/nix/conf/machines"},
		{map[string]string{"NIX_REMOTE_SYSTEMS": "/a/m"}, "@/a/m"},
		// Joined by a space, as Nix does: one "@" line naming "/a @/b".
		{map[string]string{"NIX_REMOTE_SYSTEMS": "/a:/b", "NIX_CONF_DIR": "/c"}, "@/a @/b"},
	} {
		if got := DefaultBuilders(func(k string) string { return c.env[k] }); got != c.want {
			t.Errorf("DefaultBuilders(%v) = %q, want %q", c.env, got, c.want)
		}
	}
	if d := Default(); d.Builders != "@/etc/nix/machines" || d.BuildersUseSubstitutes {
		t.Errorf("defaults: builders %q, builders-use-substitutes %v", d.Builders, d.BuildersUseSubstitutes)
	}

	s := Default()
	conf := "builders = host1 x86_64-linux ; @/etc/nix/more\nbuilders-use-substitutes = true\nextra-builders = ignored\n"
	if err := s.Parse([]byte(conf), "nix.conf", ""); err != nil {
		t.Fatal(err)
	}
	if s.Builders != "host1 x86_64-linux ; @/etc/nix/more" || !s.BuildersUseSubstitutes {
		t.Errorf("parsed builders %q, builders-use-substitutes %v", s.Builders, s.BuildersUseSubstitutes)
	}
	if err := Default().Set("builders-use-substitutes", "maybe"); err == nil {
		t.Error("builders-use-substitutes = maybe accepted")
	}
	got := Default()
	if err := got.Parse([]byte(s.KeyValue()), "KeyValue", ""); err != nil || got.Builders != s.Builders || !got.BuildersUseSubstitutes {
		t.Errorf("KeyValue round trip: %v, %q %v", err, got.Builders, got.BuildersUseSubstitutes)
	}
}
