//! `lambda-api`: parses the command line, starts logging, runs the command, and turns an error
//! into a message and an exit code.

#![forbid(unsafe_code)]

fn main() {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // Capped whatever RUST_LOG says: below info these would log tokens.
    for module in lambda_api::quiet_log_targets() {
        logger.filter_module(module, log::LevelFilter::Info);
    }
    logger.init();
    if let Err(e) = lambda_api::cli::run(std::env::args_os().skip(1)) {
        eprintln!("lambda-api: {}", lambda_api::report::Report(&e));
        std::process::exit(e.exit_code());
    }
}
