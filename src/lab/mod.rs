//! The namespace lab: a throwaway hypervisor (bridge, uplink, guests) in network namespaces, shared by tests, `hvflight demo` and the benchmark.
