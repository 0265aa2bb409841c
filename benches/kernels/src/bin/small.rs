fn main() {
    mlorc_kernel_bench::small::main()
}
