// Example identity server for certbound: oidc-provider issuing RFC 8705 certificate-bound
// opaque access tokens (client_credentials over mutual TLS) and introspecting them as
// RFC 7662 JSON, RFC 9701 signed JWT, or a phantom-token JWT access token (Accept: application/jwt).
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { createServer as createPlainServer } from 'node:http';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { exportJWK, generateKeyPair, importJWK, calculateJwkThumbprint, SignJWT } from 'jose';
import Provider, { errors } from 'oidc-provider';

const here = dirname(fileURLToPath(import.meta.url));
const env = process.env;

const PORT = Number(env.IDSVR_PORT || 8444);
const HOST = env.IDSVR_HOST || '127.0.0.1';
// Paths given in the environment are relative to the working directory; defaults to this file.
const CERTS_DIR = env.CERTS_DIR ? resolve(env.CERTS_DIR) : resolve(here, '../../certs/out');
const ISSUER = env.IDSVR_ISSUER || 'https://login.example.com:8443/oauth/v2/oauth-anonymous';
const STATE_DIR = env.IDSVR_STATE_DIR ? resolve(env.IDSVR_STATE_DIR) : resolve(here, 'state');
const ACCESS_TOKEN_TTL = Number(env.IDSVR_ACCESS_TOKEN_TTL || 900);
// The introspection client's secret: this installation's (certs/make-certs.sh makes it), never a
// default everyone knows.
const INTROSPECT_CLIENT_SECRET = env.INTROSPECT_CLIENT_SECRET
  || (() => {
    try { return readFileSync(resolve(CERTS_DIR, 'introspect-client.secret'), 'utf8').trim(); } catch { return ''; }
  })();
if (!INTROSPECT_CLIENT_SECRET) {
  console.error('idsvr: no introspection client secret: set INTROSPECT_CLIENT_SECRET or run certs/make-certs.sh');
  process.exit(1);
}
const PHANTOM_AUDIENCE = env.IDSVR_PHANTOM_AUDIENCE || 'api.example.com';
// The API's resource indicator (RFC 8707), the resource every token is issued for.
const API_RESOURCE = env.IDSVR_API_RESOURCE || 'https://api.example.com';

// The provider is mounted at /oauth/v2: its routes below are relative to that, so the token and
// introspection endpoints sit beside the issuer path, and the JWKS under it.
const MOUNT = '/oauth/v2';
const issuerPath = new URL(ISSUER).pathname.replace(/\/$/, '');
if (!issuerPath.startsWith(`${MOUNT}/`)) {
  throw new Error(`IDSVR_ISSUER path must be under ${MOUNT}/ (got ${issuerPath})`);
}
const issuerRelative = issuerPath.slice(MOUNT.length); // e.g. /oauth-anonymous
const ROUTES = {
  token: '/oauth-token-mutual-tls',
  introspection: '/oauth-introspect',
  revocation: '/oauth-revoke',
  jwks: `${issuerRelative}/jwks`,
};
// The feed of signed revocation events (Security Event Tokens, RFC 8417), for the gateway only.
const EVENTS_PATH = `${MOUNT}/oauth-revocation-events`;
const GATEWAY_DN = env.IDSVR_GATEWAY_DN || 'CN=certbound-gateway,O=Example Bank';
// The operator's offboarding action, on plain HTTP on the loopback: only with a port and a token
// (Authorization: Bearer <IDSVR_ADMIN_TOKEN>; a browser's cross-site form cannot send it).
const ADMIN_PORT = env.IDSVR_ADMIN_PORT && env.IDSVR_ADMIN_TOKEN ? Number(env.IDSVR_ADMIN_PORT) : undefined;
const ADMIN_AUTHORIZATION = `Bearer ${env.IDSVR_ADMIN_TOKEN}`;

if (!Number.isInteger(ACCESS_TOKEN_TTL) || ACCESS_TOKEN_TTL <= 0) {
  throw new Error('IDSVR_ACCESS_TOKEN_TTL must be a positive integer (seconds)');
}

const certPath = (name) => (isAbsolute(name) ? name : join(CERTS_DIR, name));
const read = (name) => readFileSync(certPath(name));

// Runtime state: signing key and cookie keys, made at first start and reused afterwards.
function loadOrCreate(file, create) {
  const path = join(STATE_DIR, file);
  if (existsSync(path)) return JSON.parse(readFileSync(path, 'utf8'));
  return create().then((value) => {
    mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
    renameSync(tmp, path);
    return value;
  });
}

const jwks = await loadOrCreate('jwks.json', async () => {
  const { privateKey } = await generateKeyPair('PS256', { modulusLength: 2048, extractable: true });
  const jwk = await exportJWK(privateKey);
  jwk.kid = await calculateJwkThumbprint(jwk);
  return { keys: [{ ...jwk, alg: 'PS256', use: 'sig' }] };
});
const cookieKeys = await loadOrCreate('cookies.json', async () => ({
  keys: [randomBytes(32).toString('base64url')],
}));

const signingJwk = jwks.keys.find((k) => k.alg === 'PS256' && k.use === 'sig' && k.d);
if (!signingJwk) throw new Error(`no private PS256 signing key in ${join(STATE_DIR, 'jwks.json')}`);
const signingKey = await importJWK(signingJwk, 'PS256');

// The self-signed client registers its certificate as a JWK with x5c (RFC 8705 section 2.2).
function certificateJwk(pemFile) {
  const pem = read(pemFile);
  const cert = new X509Certificate(pem);
  const jwk = cert.publicKey.export({ format: 'jwk' });
  return { ...jwk, use: 'sig', x5c: [cert.raw.toString('base64')] };
}

// "TYPE=value" pairs of a DN, attribute type upper-cased. Order-insensitive comparison on purpose:
// RFC 4514 strings list RDNs in reverse of the certificate's order, and people write them both ways.
function dnPairs(pairs) {
  return pairs
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => {
      const i = p.indexOf('=');
      return `${p.slice(0, i).trim().toUpperCase()}=${p.slice(i + 1).trim()}`;
    })
    .sort();
}
const parseRfc4514 = (dn) => dnPairs(dn.split(/(?<!\\),/).map((p) => p.replace(/\\(.)/g, '$1')));
// X509Certificate#subject is one "TYPE=value" per line (multi-valued RDNs joined with " + ").
const parseNodeSubject = (subject) => dnPairs(subject.split('\n').flatMap((l) => l.split(' + ')));

function peerCertificate(ctx) {
  const peer = ctx.socket.getPeerCertificate?.(true);
  if (!peer?.raw) return undefined;
  return new X509Certificate(peer.raw);
}

const clients = [
  {
    client_id: 'partner-client',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=partner-client,O=Partner One',
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'transactions',
    id_token_signed_response_alg: 'PS256',
  },
  {
    client_id: 'partner-client-2',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=partner-client-2,O=Partner Two',
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'transactions other',
    id_token_signed_response_alg: 'PS256',
  },
  {
    client_id: 'partner-selfsigned',
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    jwks: { keys: [certificateJwk('example.selfsigned.pem')] },
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'transactions',
    id_token_signed_response_alg: 'PS256',
  },
  {
    // certbound in the gateway: authenticated by the gateway's certificate (RFC 8705
    // tls_client_auth), which Envoy presents on its TLS connection to this server; no secret.
    client_id: 'certbound-gateway',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=certbound-gateway,O=Example Bank',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    id_token_signed_response_alg: 'PS256',
    introspection_signed_response_alg: 'PS256',
  },
  {
    client_id: 'introspect-client',
    client_secret: INTROSPECT_CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    id_token_signed_response_alg: 'PS256',
    introspection_signed_response_alg: 'PS256',
  },
];
const INTROSPECTORS = new Set(['introspect-client', 'certbound-gateway']);

// Storage in this process (as oidc-provider's MemoryAdapter), but with every payload reachable:
// offboarding a partner destroys all its access tokens. Expired entries are dropped as they are met.
const stored = new Map(); // `${model}:${id}` -> { payload, expiresAt (ms) }
class Adapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  static live(entry) { return entry && !(entry.expiresAt && entry.expiresAt <= Date.now()); }

  async upsert(id, payload, expiresIn) {
    // Bounded by time, and swept when it grows: a flood of tokens lasts at most their lifetime.
    if (stored.size >= 10000) for (const [key, entry] of stored) if (!Adapter.live(entry)) stored.delete(key);
    stored.set(this.key(id), { payload: { ...payload }, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
  }

  async find(id) {
    const entry = stored.get(this.key(id));
    if (Adapter.live(entry)) return entry.payload;
    stored.delete(this.key(id));
    return undefined;
  }

  * mine() {
    for (const [key, entry] of stored) if (key.startsWith(`${this.model}:`) && Adapter.live(entry)) yield entry.payload;
  }

  async findByUid(uid) {
    for (const payload of this.mine()) if (payload.uid === uid) return payload;
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const payload of this.mine()) if (payload.userCode === userCode) return payload;
    return undefined;
  }

  async consume(id) {
    const entry = stored.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { stored.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of stored) if (entry.payload.grantId === grantId) stored.delete(key);
  }
}

const provider = new Provider(ISSUER, {
  clients,
  adapter: Adapter,
  jwks: { keys: [signingJwk] },
  cookies: { keys: cookieKeys.keys },
  routes: ROUTES,
  scopes: ['transactions', 'other'],
  clientAuthMethods: [
    'tls_client_auth',
    'self_signed_tls_client_auth',
    'client_secret_basic',
  ],
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    id_token_signed_response_alg: 'PS256',
    // The library default (RS256) fails client validation when the only key is PS256.
    introspection_signed_response_alg: 'PS256',
    token_endpoint_auth_method: 'tls_client_auth',
  },
  ttl: {
    ClientCredentials: ACCESS_TOKEN_TTL,
    AccessToken: ACCESS_TOKEN_TTL,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // RFC 8707: every access token is issued for the API (its resource indicator, by default), so
    // it carries aud = the API's audience and is refused by any other resource server.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => API_RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== API_RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: 'transactions other',
          audience: PHANTOM_AUDIENCE,
          accessTokenFormat: 'opaque',
          accessTokenTTL: ACCESS_TOKEN_TTL,
        };
      },
    },
    introspection: {
      enabled: true,
      // Only the resource-server client may introspect.
      allowedPolicy: (ctx, client) => INTROSPECTORS.has(client.clientId),
    },
    jwtIntrospection: { enabled: true },
    // RFC 7009: a partner revokes its own tokens, authenticated as at the token endpoint.
    revocation: {
      enabled: true,
      // A client revokes its own tokens only (the library's default, spelled out).
      allowedPolicy: (ctx, client, token) => {
        if (token.clientId !== client.clientId) throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        return true;
      },
    },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      // Must return a PEM string or a crypto.X509Certificate (a raw DER Buffer is not accepted).
      getCertificate: peerCertificate,
      // The TLS layer verified the chain against trust.pem (rejectUnauthorized is off so that
      // self-signed clients can connect): tls_client_auth requires that it succeeded.
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      certificateSubjectMatches(ctx, property, expected) {
        const cert = peerCertificate(ctx);
        if (!cert) return false;
        switch (property) {
          case 'tls_client_auth_subject_dn': {
            const got = parseNodeSubject(cert.subject);
            const want = parseRfc4514(expected);
            return got.length === want.length && got.every((v, i) => v === want[i]);
          }
          case 'tls_client_auth_san_dns':
            return (cert.subjectAltName || '').split(', ').includes(`DNS:${expected}`);
          default:
            return false;
        }
      },
    },
  },
});

// Phantom token: Accept: application/jwt on the introspection endpoint. The provider's own
// introspection (with its client authentication) runs unchanged; its JSON answer is then
// turned into a signed JWT access token (RFC 9068 shape), or 204 when the token is inactive.
const PHANTOM = 'application/jwt';
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || ctx.path !== ROUTES.introspection
    || ctx.accepts('application/json', 'application/token-introspection+jwt', PHANTOM) !== PHANTOM) {
    return next();
  }
  ctx.req.headers.accept = 'application/json';
  await next();
  if (ctx.status !== 200 || !ctx.body || typeof ctx.body !== 'object') return; // errors pass through

  const info = ctx.body;
  if (info.active !== true) {
    ctx.body = null;
    ctx.status = 204;
    return;
  }
  const now = Math.floor(Date.now() / 1000);
  // jti names the token without revealing it (the opaque value must never reach the API).
  const jti = createHash('sha256').update(String(ctx.oidc.params.token)).digest('base64url').slice(0, 32);
  const claims = {
    client_id: info.client_id,
    scope: info.scope,
    cnf: info.cnf,
  };
  ctx.body = await new SignJWT(JSON.parse(JSON.stringify(claims)))
    .setProtectedHeader({ alg: 'PS256', typ: 'at+jwt', kid: signingJwk.kid })
    .setIssuer(provider.issuer)
    .setAudience(PHANTOM_AUDIENCE)
    .setSubject(String(info.sub ?? info.client_id))
    .setIssuedAt(info.iat ?? now)
    .setExpirationTime(info.exp)
    .setJti(jti)
    .sign(signingKey);
  ctx.type = PHANTOM;
});

// Revocation events: one Security Event Token (RFC 8417) per revoked token or offboarded client,
// signed with the provider's key (the gateway verifies them with the JWKS, typ secevent+jwt), kept
// until the tokens they name have expired, served in order after a cursor. A token is named by the
// hash the phantom JWT's jti carries: the first 32 characters of base64url(SHA-256(token)).
const TOKEN_REVOKED = 'https://certbound.example/secevent/token-revoked';
const CLIENT_OFFBOARDED = 'https://certbound.example/secevent/client-offboarded';
const revocationEvents = []; // { seq, until (s), set }
let lastSeq = 0;
// The cursor is `<boot>.<seq>`: a cursor from an earlier run of this server is answered from the
// start (events are not kept across restarts; nor are tokens).
const BOOT = randomBytes(6).toString('hex');
const tokenHash = (token) => createHash('sha256').update(String(token)).digest('base64url').slice(0, 32);
// One event at a time, in order: a poll never sees a cursor past an event not yet in the log.
let publishing = Promise.resolve();
function publish(event, until) {
  publishing = publishing.then(async () => {
    const now = Math.floor(Date.now() / 1000);
    const seq = lastSeq + 1;
    // RFC 8417: no exp (it is what tells a SET from an ID token); how long the event matters
    // is in the event (retain_until: when the tokens it names have all expired).
    const set = await new SignJWT({ events: event })
      .setProtectedHeader({ alg: 'PS256', typ: 'secevent+jwt', kid: signingJwk.kid })
      .setIssuer(provider.issuer)
      .setAudience('certbound-gateway')
      .setIssuedAt(now)
      .setJti(`${BOOT}.${seq}`)
      .sign(signingKey);
    revocationEvents.push({ seq, until, set });
    lastSeq = seq;
    while (revocationEvents.length && revocationEvents[0].until <= now) revocationEvents.shift();
  }).catch((e) => console.error('revocation event not published', e));
  return publishing;
}
// An access token destroyed by RFC 7009 revocation (ClientCredentials is the client_credentials kind).
provider.on('client_credentials.destroyed', (token) => {
  publish({ [TOKEN_REVOKED]: { token_hash: tokenHash(token.jti), client_id: token.clientId, retain_until: token.exp } }, token.exp);
});
// Offboarding: every access token of the client is destroyed, one event names them all, and the
// client gets no new token (one issued while this runs is destroyed as it is answered).
const offboarded = new Set();
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path !== ROUTES.token || !offboarded.has(ctx.oidc?.client?.clientId)) return;
  const issued = ctx.body?.access_token;
  if (issued) await (await provider.ClientCredentials.find(issued))?.destroy();
  ctx.status = 400;
  ctx.body = { error: 'invalid_client', error_description: 'the client is offboarded' };
});
async function offboard(clientId) {
  offboarded.add(clientId);
  const now = Math.floor(Date.now() / 1000);
  let destroyed = 0;
  for (const [key, entry] of stored) {
    if (key.startsWith('ClientCredentials:') && entry.payload.clientId === clientId) {
      stored.delete(key);
      destroyed += 1;
    }
  }
  const until = now + 1 + ACCESS_TOKEN_TTL;
  await publish({ [CLIENT_OFFBOARDED]: { client_id: clientId, issued_before: now + 1, retain_until: until } }, until);
  return destroyed;
}
function serveEvents(req, res, url) {
  const peer = req.socket.getPeerCertificate?.(true);
  const subject = peer?.raw ? new X509Certificate(peer.raw).subject : '';
  const gateway = req.socket.authorized === true
    && JSON.stringify(parseNodeSubject(subject)) === JSON.stringify(parseRfc4514(GATEWAY_DN));
  if (!gateway) {
    res.writeHead(403, { 'content-type': 'application/json' });
    res.end('{"error":"access_denied"}');
    return;
  }
  const cursor = /^([0-9a-f]{12})\.([0-9]{1,15})$/.exec(url.searchParams.get('after') || `${BOOT}.0`);
  if (!cursor) {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end('{"error":"invalid_request","error_description":"after is <boot>.<seq>, as next was"}');
    return;
  }
  const raw = url.searchParams.get('limit');
  const limit = raw === null ? Infinity : /^[0-9]{1,4}$/.test(raw) ? Number(raw) : 0;
  if (!(limit >= 1 && (limit === Infinity || limit <= 1000))) {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end('{"error":"invalid_request","error_description":"limit is 1 to 1000"}');
    return;
  }
  const after = cursor[1] === BOOT ? Number(cursor[2]) : 0;
  // A page of at most `limit` events; `next` is the last one's (the gateway asks again at once
  // after a full page).
  const page = revocationEvents.filter((e) => e.seq > after).slice(0, limit);
  const next = page.length === limit ? page[page.length - 1].seq : lastSeq;
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ events: page.map((e) => e.set), next: `${BOOT}.${next}` }));
}

// Mount: /oauth/v2/* goes to the provider with the prefix stripped; discovery documents under the
// issuer path are rewritten to the provider's fixed /.well-known routes.
const callback = provider.callback();
const server = createServer({
  key: read('example.tls.key'),
  cert: read('example.tls.pem'),
  ca: read('trust.pem'),
  requestCert: true,
  rejectUnauthorized: false,
}, (req, res) => {
  const url = req.url || '/';
  let inner;
  if (req.method === 'GET' && url.split('?')[0] === EVENTS_PATH) {
    serveEvents(req, res, new URL(url, 'https://idsvr'));
    return;
  }
  if (url.startsWith(`${issuerPath}/.well-known/`)) {
    inner = url.slice(issuerPath.length);
  } else if (url.startsWith(`${MOUNT}/`)) {
    inner = url.slice(MOUNT.length);
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not_found"}');
    return;
  }
  req.originalUrl = MOUNT + inner; // oidc-provider derives its mount path from originalUrl vs url
  req.url = inner;
  callback(req, res);
});

// Log why a request failed (error_detail is not sent to the client); never the token or secret.
provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));
for (const event of ['grant.error', 'introspection.error', 'revocation.error', 'jwks.error', 'discovery.error']) {
  provider.on(event, (ctx, err) => {
    const client = ctx.oidc?.entities?.Client?.clientId ?? ctx.oidc?.params?.client_id ?? '-';
    console.error(event, `client=${client}`, err.error, err.error_detail || err.error_description || '');
  });
}

server.listen(PORT, HOST, () => {
  const base = `https://${HOST}:${server.address().port}`;
  console.log(`idsvr listening on ${base} issuer=${ISSUER}`);
  console.log(`  token:         ${MOUNT}${ROUTES.token}`);
  console.log(`  introspection: ${MOUNT}${ROUTES.introspection}`);
  console.log(`  revocation:    ${MOUNT}${ROUTES.revocation}`);
  console.log(`  events:        ${EVENTS_PATH}`);
  console.log(`  jwks:          ${MOUNT}${ROUTES.jwks}`);
  console.log(`  discovery:     ${issuerPath}/.well-known/openid-configuration`);
});

// POST /admin/offboard with client_id=<id>: the operator offboards a partner.
const admin = ADMIN_PORT === undefined ? undefined : createPlainServer((req, res) => {
  let body = '';
  req.on('data', (d) => { body += d; if (body.length > 4096) req.destroy(); });
  req.on('end', async () => {
    const clientId = new URLSearchParams(body).get('client_id');
    if (req.headers.authorization !== ADMIN_AUTHORIZATION) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end('{"error":"unauthorized"}');
      return;
    }
    if (req.method !== 'POST' || req.url !== '/admin/offboard' || !clientId
      || !clients.some((c) => c.client_id === clientId)) {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end('{"error":"invalid_request"}');
      return;
    }
    const destroyed = await offboard(clientId);
    console.log(`offboarded client=${clientId}: ${destroyed} access tokens destroyed`);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ client_id: clientId, destroyed }));
  });
});
admin?.listen(ADMIN_PORT, '127.0.0.1', () => console.log(`  admin:         http://127.0.0.1:${admin.address().port}/admin/offboard`));

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    admin?.close();
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
