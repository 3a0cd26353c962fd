package cli

import (
	"fmt"

	"ferry/internal/localstore"
	"ferry/internal/settings"
	"ferry/nix/signature"
	"ferry/store"
)

// signatureCheck returns the check a copy into dst must make of each path:
// a path copied into a local store with require-sigs set (Nix's default;
// the store URI's require-sigs= overrides nix.conf's) must be
// content-addressed or carry a valid signature by one of the
// trusted-public-keys, as Nix 2.8's LocalStore::addToStore requires
// (src/libstore/local-store.cc, pathInfoIsUntrusted). Its message is Nix's.
func signatureCheck(dst store.Store, conf *settings.Settings, noCheck bool) (func(*store.PathInfo) error, error) {
	local, ok := dst.(*localstore.Store)
	if !ok || noCheck {
		return nil, nil
	}
	require := conf.RequireSigs
	if r := local.RequireSigs(); r != nil {
		require = *r
	}
	if !require {
		return nil, nil
	}
	keys, err := conf.PublicKeys()
	if err != nil {
		return nil, err
	}
	return func(info *store.PathInfo) error {
		if signature.IsContentAddressed(info.Path, info.CA, info.References) {
			return nil
		}
		n, err := keys.VerifyPath(info.Path, info.NarHash, info.NarSize, info.References, info.Sigs)
		if err != nil {
			return fmt.Errorf("cannot add path '%s': %w", info.Path, err)
		}
		if n == 0 {
			return fmt.Errorf("cannot add path '%s' because it lacks a valid signature", info.Path)
		}
		return nil
	}, nil
}
