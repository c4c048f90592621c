"""Peak memory as the benchmarks report it: CUDA's allocator peak on a GPU, the process's max RSS on a CPU."""

import resource


def peak_memory(cuda: bool) -> dict:
    import torch

    if cuda:
        return {"peak_mem_MB": round(torch.cuda.max_memory_allocated() / 2**20, 1), "peak_mem_kind": "cuda allocated"}
    return {"peak_mem_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_mem_kind": "process max RSS"}
