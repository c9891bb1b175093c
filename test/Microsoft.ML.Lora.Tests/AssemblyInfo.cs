// Tests share process-wide libtorch state (the global random generator, intra-op threads) and some measure this
// process's memory, so test classes run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
