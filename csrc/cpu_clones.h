// The CPU kernels' hot loops compiled three times on x86-64 Linux, for AVX-512, AVX2 and the
// baseline ISA (SSE2, all that a portable build may assume), the one the CPU runs chosen when the
// module loads. No version contracts into fused multiply-adds (CMakeLists.txt compiles
// labels_cpu.cpp with -ffp-contract=off: an optimize() attribute would keep GCC from inlining the
// transform's helpers into the clones), so every version rounds alike and the results do not depend
// on the CPU.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define MUD_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MUD_CPU_CLONES
#endif
