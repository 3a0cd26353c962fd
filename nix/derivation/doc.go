// Package derivation owns Nix store derivations as Nix 2.8 knows them
// (docs/store.md §4; src/libstore/derivations.cc and the derivation part
// of src/libexpr/primops.cc): the in-memory [Derivation], its ATerm text
// (the contents of a .drv file), hashDerivationModulo, the output paths
// `derivation { … }` gives a derivation, and the JSON `nix show-derivation`
// prints.
//
// # ATerm
//
// [Parse] reads a .drv file and [Derivation.ATerm] prints one exactly as
// Nix's Derivation::unparse does. The parser accepts the language Nix's
// printer produces and little else:
//
//   - separators must be exactly where Nix puts them (Nix's own parser also
//     takes a leading comma in a list and missing commas between elements);
//   - strings printed with escaping (builder, args, env keys and values)
//     may only use the escapes \" \\ \n \r \t, and may not contain a raw
//     LF, CR or TAB; strings printed raw (output names, paths, hash fields,
//     platform, output names of inputs) may not contain a backslash;
//   - every path must be a store path in the store directory, and input
//     derivations must end in .drv;
//   - duplicate outputs, input derivations, input sources, env keys or
//     output names of one input are rejected (Nix keeps one of them);
//   - a fixed output's path must equal the path its hash gives (Nix 2.8
//     silently prints the recomputed path instead);
//   - DrvWithVersion (dynamic derivations, Nix 2.18+) and the "text:"
//     hash method are rejected: Nix 2.8 knows neither.
//
// Like Nix, Parse accepts lists in any order (ATerm re-sorts them) and a
// fixed output's hash in any unprefixed encoding (ATerm prints base16).
// Everything else parses to a value that prints back byte for byte.
//
// # Hashing and output paths
//
// [HashModulo] is hashDerivationModulo. Input derivations are supplied by
// a [Resolver], so a store and a set of in-memory derivations work alike;
// a [Memo] caches the hash of every input derivation so that a graph is
// hashed once per derivation. [Derivation.FillOutputPaths] does what
// derivationStrict (primops.cc) does after building the environment, and
// [Derivation.CheckOutputPaths] what LocalStore::checkDerivationOutputs
// does. [Derivation.Path] is the .drv file's own store path.
//
// # JSON
//
// [MarshalShowJSON] prints exactly what `nix show-derivation` 2.8 prints,
// and [ParseJSON] reads that shape back (and, where cheap, the version-4
// shape of current Nix's test fixtures).
package derivation
