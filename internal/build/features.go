package build

import (
	"ferry/internal/localstore"
	"ferry/internal/settings"
)

// ForStore returns s with st's own system features in place of nix.conf's
// when the store sets them (a store URI's system-features=, as Nix's
// machines file sets it for every builder). Nix checks a derivation's
// requiredSystemFeatures against the store's systemFeatures setting, whose
// default is nix.conf's (store-api.hh and parsed-derivations.cc
// canBuildLocally@2.8.0), and names them in the refusal. Nil s means
// settings.Default().
func ForStore(st *localstore.Store, s *settings.Settings) *settings.Settings {
	if s == nil {
		s = settings.Default()
	}
	f := st.SystemFeatures()
	if f == nil {
		return s
	}
	c := *s
	c.SystemFeatures = append([]string(nil), f...)
	return &c
}
