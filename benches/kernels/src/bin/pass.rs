fn main() {
    mlorc_kernel_bench::pass::main()
}
