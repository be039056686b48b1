//! `bare-pingora HTTP_ADDR HTTPS_ADDR CERT KEY BACKEND...`: Pingora's round-robin example
//! proxy with Tollgate's build and thread settings, as the floor Tollgate is measured against.
use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use std::sync::Arc;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no backend"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: bare-pingora HTTP_ADDR HTTPS_ADDR CERT KEY BACKEND...");
        std::process::exit(2);
    }
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        pid_file: "/tmp/bare-pingora.pid".into(),
        upgrade_sock: "/tmp/bare-pingora.sock".into(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let lb = match LoadBalancer::try_from_iter(args[4..].iter().map(String::as_str)) {
        Ok(lb) => Arc::new(lb),
        Err(e) => {
            eprintln!("bare-pingora: backends: {e}");
            std::process::exit(1);
        }
    };
    let mut svc = http_proxy_service(&server.configuration, Bare(lb));
    svc.add_tcp(&args[0]);
    let mut tls = match TlsSettings::intermediate(&args[2], &args[3]) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bare-pingora: tls: {e}");
            std::process::exit(1);
        }
    };
    tls.enable_h2();
    svc.add_tls_with_settings(&args[1], None, tls);
    server.add_service(svc);
    server.run_forever();
}
