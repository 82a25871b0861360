//! The protected API: records every request Envoy forwards and answers 200 `{"ok":true}`.

use std::sync::{Arc, Mutex};

use super::http::{Reply, Request, Server};

pub struct Upstream {
    server: Server,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let recorded = requests.clone();
        let server = Server::start(Arc::new(move |req: &Request| {
            recorded.lock().unwrap().push(req.clone());
            Reply::new(200, "application/json", r#"{"ok":true}"#)
        }));
        Upstream { server, requests }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The last request received; panics if there was none.
    pub fn last(&self) -> Request {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}
