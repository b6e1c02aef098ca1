//! The caching CPU allocator (`csrc/cpu_allocator.cpp`): one test, alone in its process, so that
//! nothing else allocates at the same time.

use pixelseq::device::{cache_for_inference, cpu_allocator_stats, install_cpu_allocator, reset_cpu_peak, trim_cpu_allocator};
use tch::{Device, Kind, Tensor};

const MIB: u64 = 1 << 20;

#[test]
fn large_blocks_are_reused_and_the_cache_stays_within_its_bound() {
    std::env::set_var("PIXELSEQ_CPU_ALLOCATOR", "jemalloc");
    let err = install_cpu_allocator().unwrap_err().to_string();
    assert!(err.contains("PIXELSEQ_CPU_ALLOCATOR") && err.contains("jemalloc"), "{err}");
    std::env::remove_var("PIXELSEQ_CPU_ALLOCATOR");
    install_cpu_allocator().unwrap();
    let float = (Kind::Float, Device::Cpu);
    // A freed block is handed out again for the next request of its size.
    let a = Tensor::zeros([1 << 20], float); // 4 MiB
    let first = a.data_ptr();
    drop(a);
    let s0 = cpu_allocator_stats();
    assert!(s0.cached >= 4 * MIB, "{s0:?}");
    let b = Tensor::ones([1 << 20], float);
    let s1 = cpu_allocator_stats();
    assert_eq!(b.data_ptr(), first, "the cached block was not reused");
    assert_eq!((s1.hits, s1.misses), (s0.hits + 1, s0.misses));
    assert_eq!(
        b.double_value(&[(1 << 20) - 1]),
        1.0,
        "a reused block holds the new tensor's values"
    );
    drop(b);

    // A request of another size releases cached blocks so that live + cached stays within the
    // peak plus the largest block (4 MiB and the header, rounded up to 64 KiB).
    let peak = cpu_allocator_stats().peak;
    let c = Tensor::zeros([1 << 18], float); // 1 MiB: too small for the cached 4 MiB block, a miss
    let s2 = cpu_allocator_stats();
    assert_eq!(s2.misses, s1.misses + 1);
    assert!(s2.live + s2.cached <= peak + 4 * MIB + 65536, "{s2:?}, peak before {peak}");
    let d = Tensor::zeros([3 << 18], float); // 3 MiB: served by the cached 4 MiB block (within 1.5×)
    assert_eq!((cpu_allocator_stats().hits, cpu_allocator_stats().misses), (s2.hits + 1, s2.misses));
    drop((c, d));

    // Small blocks bypass the cache; trimming releases every cached block.
    let small = Tensor::zeros([100], float);
    assert_eq!(cpu_allocator_stats().misses, s2.misses);
    drop(small);
    trim_cpu_allocator();
    assert_eq!(cpu_allocator_stats().cached, 0);

    // A pass without gradients: three 2 MiB blocks at its peak, then requests no cached block can
    // serve. With one peak of room the 3.9 MiB request evicts a cached block; for inference the
    // cache may hold twice the peak and keeps them all.
    let cycle = || {
        let held: Vec<Tensor> = (0..3).map(|_| Tensor::zeros([1 << 19], float)).collect();
        drop(held);
        let _one = Tensor::zeros([1 << 18], float); // 1 MiB
        let before = cpu_allocator_stats();
        let _big = Tensor::zeros([(39 << 18) / 10], float); // 3.9 MiB
        let after = cpu_allocator_stats();
        trim_cpu_allocator();
        (before, after)
    };
    reset_cpu_peak();
    let (before, after) = cycle();
    assert!(after.cached < before.cached, "{before:?} → {after:?}");
    cache_for_inference();
    let (before, after) = cycle();
    assert_eq!(after.cached, before.cached, "{before:?} → {after:?}");
    assert!(after.live + after.cached <= 2 * after.peak, "{after:?}");
}
