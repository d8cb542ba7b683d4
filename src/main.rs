//! The `cairn` binary: see `cairn --help`.

// glibc malloc showed up at ~15% of a loaded node's CPU; mimalloc is built for
// many small, short-lived allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cairn::cli::main());
}
