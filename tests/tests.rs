//! Integration tests: the real service and the real okeanos simulator on 127.0.0.1:0, talking
//! HTTP (the service's workers call the simulator over ureq, as they would call ~okeanos).

mod support;

/// The action call: checks and their order, the state table, bodies and headers.
mod action;
/// A keep-alive connection, and how the service ends one.
mod connection;
/// Create: the call, its checks, the build, its failures and the create form's reads.
mod create;
/// A create killed between any two of its calls, and taken up again.
mod create_crash;
/// Crashes, restarts, shutdown, concurrent writers and secrets at rest.
mod durability;
/// The action engine: phases, waits that hold no thread, many actions per worker.
mod engine;
/// A misbehaving ~okeanos.
mod faults;
/// Mutated requests from a fixed seed.
mod fuzz;
/// Identity calls that cannot starve the service.
mod identity;
/// Destroy, and the calls of the original service's clients.
mod lifecycle;
/// One machine's operations: backup, restore, upgrades, a full disk.
mod operations;
/// The real binary: the command line, configuration, and surviving SIGKILL.
mod process;
/// The read calls, action tracking, idempotency keys and metrics.
mod read;
/// Restore: nothing in the file trusted, nothing of the replaced database lost.
mod restore;
/// The architecture's invariants, read from the source.
mod tidy;
/// The workers against the simulator: call order, skips, faults, concurrency.
mod worker;
