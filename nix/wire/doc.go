// Package wire owns the primitive encodings shared by Nix's serve protocol,
// the export stream and NAR (docs/protocol.md §1; src/libutil/serialise.cc in
// Nix 2.8.0):
//
//   - an integer of any type is 8 bytes, unsigned, little-endian;
//   - a string (or byte blob) is its length as such an integer, the raw bytes,
//     then zero bytes up to the next multiple of 8;
//   - a list or set of strings is a count followed by that many strings.
//
// The protocol has no framing: a message is just these items in sequence, so
// whoever reads a stream must consume exactly the bytes of each item.
//
// # Buffering
//
// Reader does no buffering of its own and never reads past the item it is
// decoding. A protocol endpoint should wrap its input once in a
// bufio.Reader, build a Reader on it, and hand the same bufio.Reader (or the
// Reader itself, which passes Read through) to every sub-decoder, such as a
// NAR reader in the middle of a command. Because they all read from one
// buffer, no decoder can swallow bytes that belong to the next.
//
// Writer sits on a bufio.Writer; nothing reaches the peer until Flush.
//
// # Errors
//
// Reads follow io.ReadFull: io.EOF (unwrapped) means the stream ended before
// the first byte of the item, which is how a server sees a clean disconnect
// at a command boundary; an end inside an item gives an error wrapping
// io.ErrUnexpectedEOF. Inside a larger structure callers should treat io.EOF
// as unexpected too (see NoEOF). Integers too large for the type Nix would
// read them into give Nix's own message ("serialised integer N is too large
// for type 'j'"), lengths and counts beyond the caller's limit wrap
// ErrTooLong, and non-zero padding wraps ErrPadding.
//
// Neither Reader nor Writer is safe for concurrent use.
package wire
