fn main() {
    eprintln!("tortiectl: not implemented yet");
    std::process::exit(1);
}
