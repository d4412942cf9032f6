//! `lambda-api`: parses the command line, starts logging, runs the command, and turns an error
//! into a message and an exit code.

#![forbid(unsafe_code)]

fn main() {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // The HTTP client, below info, writes whole requests and answers: tokens included (in
    // identity's body, and in every compute call's X-Auth-Token). Capped, whatever RUST_LOG
    // says.
    for module in ["ureq", "ureq_proto"] {
        logger.filter_module(module, log::LevelFilter::Info);
    }
    logger.init();
    if let Err(e) = lambda_api::cli::run(std::env::args_os().skip(1)) {
        eprintln!("lambda-api: {}", lambda_api::report::Report(&e));
        std::process::exit(e.exit_code());
    }
}
