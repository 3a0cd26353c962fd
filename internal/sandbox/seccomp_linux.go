//go:build linux

package sandbox

import (
	"fmt"
	"syscall"
	"unsafe"
)

// Nix's default seccomp filter (filter-syscalls = true, docs/store.md
// §8.1): builders can't make setuid or setgid files, nor set extended
// attributes, which the store can't represent.

const (
	prSetSeccomp      = 22         // PR_SET_SECCOMP
	seccompModeFilter = 2          // SECCOMP_MODE_FILTER
	seccompRetAllow   = 0x7fff0000 // SECCOMP_RET_ALLOW
	seccompRetErrno   = 0x00050000 // SECCOMP_RET_ERRNO | errno
	seccompDataNr     = 0          // offsetof(struct seccomp_data, nr)
	seccompDataArch   = 4          // offsetof(struct seccomp_data, arch)
	seccompDataArgs   = 16         // offsetof(struct seccomp_data, args), 8 bytes each
	auditArchX86_64   = 0xc000003e // AUDIT_ARCH_X86_64
	auditArchI386     = 0x40000003 // AUDIT_ARCH_I386
	auditArchAArch64  = 0xc00000b7 // AUDIT_ARCH_AARCH64
	x32SyscallBit     = 0x40000000 // __X32_SYSCALL_BIT
	modeSetuidSetgid  = 0o6000     // S_ISUID | S_ISGID
	bpfLdWAbs         = syscall.BPF_LD | syscall.BPF_W | syscall.BPF_ABS
	bpfJeqK           = syscall.BPF_JMP | syscall.BPF_JEQ | syscall.BPF_K
	bpfJsetK          = syscall.BPF_JMP | syscall.BPF_JSET | syscall.BPF_K
	bpfAndK           = syscall.BPF_ALU | syscall.BPF_AND | syscall.BPF_K
	bpfRetK           = syscall.BPF_RET | syscall.BPF_K
	noModeArg         = -1
	enotsup           = syscall.EOPNOTSUPP
	eperm             = syscall.EPERM
)

// seccompRule refuses one system call with errno: always, or when its mode
// argument (index modeArg) has the setuid or setgid bit.
type seccompRule struct {
	nr      uint32
	modeArg int
	errno   syscall.Errno
}

// seccompArches holds the rules per architecture: system call numbers
// differ between x86_64, i386 and aarch64.
var seccompArches = []struct {
	arch    uint32
	x32Mask bool // also match x32 calls, numbered with x32SyscallBit
	rules   []seccompRule
}{
	{auditArchX86_64, true, []seccompRule{
		{90, 1, eperm},            // chmod
		{91, 1, eperm},            // fchmod
		{268, 2, eperm},           // fchmodat
		{452, 2, eperm},           // fchmodat2
		{188, noModeArg, enotsup}, // setxattr
		{189, noModeArg, enotsup}, // lsetxattr
		{190, noModeArg, enotsup}, // fsetxattr
	}},
	{auditArchI386, false, []seccompRule{
		{15, 1, eperm},            // chmod
		{94, 1, eperm},            // fchmod
		{306, 2, eperm},           // fchmodat
		{452, 2, eperm},           // fchmodat2
		{226, noModeArg, enotsup}, // setxattr
		{227, noModeArg, enotsup}, // lsetxattr
		{228, noModeArg, enotsup}, // fsetxattr
	}},
	{auditArchAArch64, false, []seccompRule{
		{52, 1, eperm},          // fchmod
		{53, 2, eperm},          // fchmodat
		{452, 2, eperm},         // fchmodat2
		{5, noModeArg, enotsup}, // setxattr
		{6, noModeArg, enotsup}, // lsetxattr
		{7, noModeArg, enotsup}, // fsetxattr
	}},
}

// seccompProgram assembles the classic BPF filter.
func seccompProgram() []syscall.SockFilter {
	stmt := func(code uint16, k uint32) syscall.SockFilter { return syscall.SockFilter{Code: code, K: k} }
	jump := func(code uint16, k uint32, jt, jf uint8) syscall.SockFilter {
		return syscall.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	var prog []syscall.SockFilter
	for _, a := range seccompArches {
		var body []syscall.SockFilter
		body = append(body, stmt(bpfLdWAbs, seccompDataNr))
		if a.x32Mask {
			body = append(body, stmt(bpfAndK, ^uint32(x32SyscallBit)))
		}
		for _, r := range a.rules {
			refuse := stmt(bpfRetK, seccompRetErrno|uint32(r.errno))
			if r.modeArg == noModeArg {
				body = append(body, jump(bpfJeqK, r.nr, 0, 1), refuse)
				continue
			}
			body = append(body,
				jump(bpfJeqK, r.nr, 0, 4),
				stmt(bpfLdWAbs, uint32(seccompDataArgs+8*r.modeArg)), // low half on little-endian
				jump(bpfJsetK, modeSetuidSetgid, 0, 1),
				refuse,
				stmt(bpfRetK, seccompRetAllow))
		}
		body = append(body, stmt(bpfRetK, seccompRetAllow))
		prog = append(prog, stmt(bpfLdWAbs, seccompDataArch), jump(bpfJeqK, a.arch, 0, uint8(len(body))))
		prog = append(prog, body...)
	}
	return append(prog, stmt(bpfRetK, seccompRetAllow))
}

// installSeccomp loads the filter into the calling thread, which must be the
// one that execs the builder, after no_new_privs is set.
func installSeccomp() error {
	prog := seccompProgram()
	fprog := syscall.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetSeccomp, seccompModeFilter, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("install seccomp filter: %w", e)
	}
	return nil
}
