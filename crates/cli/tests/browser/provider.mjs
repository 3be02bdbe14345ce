// A real OpenID provider (the certified `oidc-provider` package) for the
// sign-in tests, on 127.0.0.1:$PORT. Its development sign-in pages take
// any user name and password. $CLIENTS is a JSON list of clients
// ({client_id, client_secret, redirect_uris, post_logout_redirect_uris});
// $TOKEN_TTL (seconds) is how long access and ID tokens live.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.WEFT_NODE_MODULES;
const { default: Provider } = await import(
  pathToFileURL(path.join(modules, 'oidc-provider/lib/index.js')).href
);

const port = Number(process.env.PORT);
const ttl = Number(process.env.TOKEN_TTL || 3600);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.CLIENTS).map((client) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...client,
}));

const provider = new Provider(issuer, {
  clients,
  pkce: { required: () => true },
  ttl: {
    AccessToken: ttl,
    IdToken: ttl,
    RefreshToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
  issueRefreshToken: () => true,
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, email: `${id}@example.test` }),
  }),
  features: { rpInitiatedLogout: { enabled: true } },
  cookies: { keys: ['weft-test-cookie-key'] },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`provider ${issuer} ready`);
});
