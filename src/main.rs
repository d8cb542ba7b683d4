//! The `cairn` binary: see `cairn --help`.

fn main() {
    std::process::exit(cairn::cli::main());
}
