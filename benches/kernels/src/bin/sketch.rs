fn main() {
    mlorc_kernel_bench::sketch::main()
}
