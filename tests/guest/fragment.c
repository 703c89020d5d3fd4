// SPDX-License-Identifier: GPL-2.0
/*
 * fragment MIB [STRIDE]: a guest helper for the fragmented and scattered migration cases.
 *
 * Maps MIB MiB of a memory file (memfd), writes every 4 KiB page (a pattern of the page's
 * index, so no page is a zero page the migration could skip), then punches out the last page of
 * every STRIDE (default 2: every other page; fallocate, as our guest kernel has no madvise):
 * the guest is left with MIB/STRIDE MiB free in single pages that cannot merge, about STRIDE
 * frames apart. Prints "fragmented N" (the pages freed) and keeps the rest until
 * /tmp/fragment.check appears; then checks every page it kept, prints "kept N bad M" and exits
 * (status 1 if any page is bad).
 *
 * Built static without a C library (raw system calls), so it needs nothing in the guest.
 */

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_mmap 9
#define SYS_nanosleep 35
#define SYS_exit 60
#define SYS_ftruncate 77
#define SYS_fallocate 285
#define SYS_memfd_create 319

#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 1
#define FALLOC_FL_KEEP_SIZE 1
#define FALLOC_FL_PUNCH_HOLE 2
#define PAGE 4096UL
#define MAGIC 0x5a17c0de00000000UL

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static long sys3(long n, long a, long b, long c)
{
	return sys6(n, a, b, c, 0, 0, 0);
}

static void out(const char *s)
{
	unsigned long n = 0;

	while (s[n])
		n++;
	sys3(SYS_write, 1, (long)s, n);
}

static void out_num(unsigned long v)
{
	char buf[24];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do {
		buf[--i] = '0' + v % 10;
		v /= 10;
	} while (v);
	out(buf + i);
}

static __attribute__((noreturn)) void quit(int status)
{
	for (;;)
		sys3(SYS_exit, status, 0, 0);
}

__attribute__((used)) void start(long *sp)
{
	char **argv = (char **)(sp + 1);
	unsigned long mib = 0, stride = 2, pages, i, bad = 0, kept = 0;
	const char *p;
	unsigned long *mem;
	long fd;
	struct {
		long sec, nsec;
	} pause = { 0, 100 * 1000 * 1000 };

	if (sp[0] != 2 && sp[0] != 3) {
		out("usage: fragment MIB [STRIDE]\n");
		quit(2);
	}
	for (p = argv[1]; *p >= '0' && *p <= '9' && mib <= (1UL << 30); p++)
		mib = mib * 10 + (*p - '0');
	if (*p || !mib || mib > (1UL << 30)) {
		out("fragment: MIB must be a positive number\n");
		quit(2);
	}
	if (sp[0] == 3) {
		stride = 0;
		for (p = argv[2]; *p >= '0' && *p <= '9' && stride <= 4096; p++)
			stride = stride * 10 + (*p - '0');
		if (*p || stride < 2 || stride > 4096) {
			out("fragment: STRIDE must be 2 to 4096\n");
			quit(2);
		}
	}
	pages = mib << 8;
	fd = sys3(SYS_memfd_create, (long)"fragment", 0, 0);
	if (fd < 0 || sys3(SYS_ftruncate, fd, pages * PAGE, 0)) {
		out("fragment: memfd_create or ftruncate failed\n");
		quit(1);
	}
	mem = (unsigned long *)sys6(SYS_mmap, 0, pages * PAGE, PROT_READ | PROT_WRITE,
				    MAP_SHARED, fd, 0);
	if ((long)mem < 0 && (long)mem > -4096) {
		out("fragment: mmap failed\n");
		quit(1);
	}
	for (i = 0; i < pages; i++)
		mem[i * (PAGE / sizeof(long))] = MAGIC | i;
	for (i = stride - 1; i < pages; i += stride) {
		if (sys6(SYS_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * PAGE, PAGE,
			 0, 0)) {
			out("fragment: fallocate failed\n");
			quit(1);
		}
	}
	out("fragmented ");
	out_num(pages / stride);
	out("\n");
	while (sys3(SYS_open, (long)"/tmp/fragment.check", 0, 0) < 0)
		sys3(SYS_nanosleep, (long)&pause, 0, 0);
	for (i = 0; i < pages; i++) {
		if (i % stride == stride - 1)
			continue;
		kept++;
		if (mem[i * (PAGE / sizeof(long))] != (MAGIC | i))
			bad++;
	}
	out("kept ");
	out_num(kept);
	out(" bad ");
	out_num(bad);
	out("\n");
	quit(bad ? 1 : 0);
}

__asm__(".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call start\n"
	"	hlt\n");
