fn main() {
    mlorc_kernel_bench::pattern::main()
}
