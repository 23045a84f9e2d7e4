use amr_export::cli::{run, Args};
use clap::Parser;

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amr-export: cannot start the runtime: {e}");
            std::process::exit(amr_export::error::EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(summary) => {
            if !args.quiet {
                eprintln!(
                    "amr-export: {} messages ({} rows) of {}",
                    summary.messages, summary.rows, summary.subject
                );
            }
        }
        Err(e) => {
            eprintln!("amr-export: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
