# The derivations whose .drv files and `nix show-derivation` JSON are
# recorded under testdata/drv by scripts/record-fixtures. Each attribute
# name is the fixture's role; testdata/attrs.txt maps it to the .drv path.
let
  system = "x86_64-linux";
  drv = attrs: derivation ({ inherit system; builder = "/bin/sh"; } // attrs);
  # Control bytes, which a Nix string literal cannot spell.
  ctl = builtins.fromJSON ''"ctl\u0001\u001f del\u007f"'';
in rec {
  # Input-addressed, one and several outputs (docs/store.md §4.5).
  simple = drv { name = "simple"; args = [ "-c" "echo hello > $out" ]; };
  multi = drv { name = "multi"; outputs = [ "out" "dev" ]; args = [ "-c" "x" ]; };
  many = drv { name = "many"; outputs = [ "lib" "out" "bin" "doc" ]; };

  # Fixed outputs: flat and recursive, every algorithm, the hash written
  # in every encoding Nix accepts.
  fod-flat = drv { name = "fod.txt"; outputHashAlgo = "sha256"; outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  fod-rec = drv { name = "fodr"; outputHashMode = "recursive"; outputHash = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="; };
  fod-md5-flat = drv { name = "fod-md5"; outputHashMode = "flat"; outputHashAlgo = "md5"; outputHash = "4425hx5d1mc9y39llj4k4nm55i"; };
  fod-md5-rec = drv { name = "fod-md5-r"; outputHashMode = "recursive"; outputHash = "md5-0+po6BC8f5KXAkwBuFhnng=="; };
  fod-sha1-flat = drv { name = "fod-sha1"; outputHashAlgo = "sha1"; outputHash = "9XLTlvrpIGYocU+yzgD3LpTyJY8="; };
  fod-sha1-rec = drv { name = "fod-sha1-r"; outputHashMode = "recursive"; outputHashAlgo = "sha1"; outputHash = "0deb52c2735eb38d360f976b7b3823c4ad05cce7"; };
  fod-sha256-nix32 = drv { name = "fod-sha256"; outputHashAlgo = "sha256"; outputHash = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"; };
  fod-sha512-flat = drv { name = "fod-sha512"; outputHash = "sha512-58IrmUxZ2c8rSOVJseJGZmNgRZMNPafBrLKZ0cO3+TH5Sq5B7dosKyB6NuEPi8uNRSI+VIePWzFufOO2vAGWKQ=="; };
  fod-sha512-rec = drv { name = "fod-sha512-r"; outputHashMode = "recursive"; outputHashAlgo = "sha512"; outputHash = "2q80akf4fi29vbxj82s21m9y6xrdjnwi9q1c3kfab0032zdnl18nzninbjw6n0rz4p76g8s1c5yv9hznv09l085azzqvk4hn9irv389"; };

  # Depends on all of the above kinds; escapes in env values, a source
  # path, passAsFile (docs/store.md §4.5).
  top = drv {
    name = "top";
    src = ./src.txt;
    a = "${simple} ${multi.dev} ${fod-flat} ${fod-rec}";
    passAsFile = [ "a" ];
    weird = "quote\" backslash\\ nl\n tab\t cr\r dollar\$ unicode é ${ctl}";
  };
  # Two levels: top's modulo hash is taken over its unmasked .drv.
  top2 = drv { name = "top2"; args = [ "-c" "echo ${top} > $out" ]; };

  # Escapes in the builder, the arguments and env keys; an input on two
  # outputs of one derivation; a text file with a reference; a .drv path
  # (its closure becomes input sources).
  escapes = derivation {
    name = "escapes";
    system = "aarch64-darwin";
    builder = "/bin/s\"h\\ ${ctl}";
    args = [ "q\"uote" "back\\slash" "nl\n" "tab\t" "cr\r" "" "\${notinterp}" "unicode é ☃" ctl ];
    "key with space" = "v";
    "k\"ey\\" = "v\n";
    both = "${multi.out} ${multi.dev} ${many.bin}";
    file = builtins.toFile "ref.txt" "see ${builtins.toFile "foo.txt" "hello\n"}\n";
    drv = simple.drvPath;
    flag = true;
    off = false;
    list = [ 1 "two" null ];
  };

  # Structured attributes: everything in env __json.
  structured = drv {
    name = "structured";
    __structuredAttrs = true;
    outputs = [ "out" "dev" ];
    list = [ 1 "two" { three = 3; } ];
    weird = "q\" ${ctl}";
    dep = "${simple}";
  };

  # hashDerivationModulo: two fixed-output derivations with the same
  # output and different builders hash alike, so intermediates over them
  # get the same output paths, and a parent over one or both of them
  # merges them into one input entry.
  source-first = derivation { name = "source"; inherit system; builder = "/bin/first"; outputHashMode = "recursive"; outputHash = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="; };
  source-second = derivation { name = "source"; inherit system; builder = "/bin/second"; outputHashMode = "recursive"; outputHash = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="; };
  intermediate-first = derivation { name = "intermediate"; inherit system; builder = "/bin/intermediate"; outputs = [ "out" "dev" ]; src = source-first; };
  intermediate-second = derivation { name = "intermediate"; inherit system; builder = "/bin/intermediate"; outputs = [ "out" "dev" ]; src = source-second; };
  parent-joined = derivation { name = "parent"; inherit system; builder = "/bin/parent"; a = intermediate-first.out; b = intermediate-first.dev; };
  parent-split = derivation { name = "parent"; inherit system; builder = "/bin/parent"; a = intermediate-second.out; b = intermediate-first.dev; };

  # Floating content-addressed, impure, and derivations deferred on them.
  ca = drv { name = "ca"; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  ca-multi = drv { name = "ca-multi"; __contentAddressed = true; outputs = [ "out" "dev" ]; outputHashAlgo = "sha512"; };
  depca = drv { name = "depca"; x = "${ca}"; };
  impure = drv { name = "impure"; __impure = true; };
  depimpure = drv { name = "depimpure"; x = "${impure}"; };
}
