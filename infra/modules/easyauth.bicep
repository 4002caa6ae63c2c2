// App Service Authentication ("Easy Auth", the V2 configuration) on the function app: every request
// needs a Microsoft Entra access token issued for the blobseal API (the app registration deploy.sh
// creates), except the two paths below. Without one the platform answers 401 before the app runs.
//
// The platform validates the token (signature, issuer, audience, expiry) and hands the app its claims
// in X-MS-CLIENT-PRINCIPAL, which callers cannot set while this is on; it also sets WEBSITE_AUTH_ENABLED
// for the app (never a template: check_infra.py fails if one does). The platform does not check app
// roles: the app does, per route (shared/identity.py: blobseal.read, .write, .erase, .audit, .operate).
//
// - API only: bearer tokens, no login flow, so no client secret and no token store (the app reads
//   X-MS-CLIENT-PRINCIPAL, not the X-MS-TOKEN-* headers the store feeds).
// - Audiences: the application id URI (tokens requested for it: v1 tokens carry it as aud) and the
//   client id (v2 tokens carry that; it is also always allowed implicitly).
// - Issuer: <login endpoint><tenant>/v2.0 (the registration asks for v2 access tokens).
// - Excluded paths (no token needed; Easy Auth matches them as path prefixes):
//     /api/health              anonymous by design: up or down only, from cached probes
//     /runtime/webhooks/blobs  Event Grid's BlobCreated deliveries to the blob trigger: Event Grid sends
//                              no Entra token there; the host checks the blobs_extension system key in
//                              the URL (code=), and nothing else is served under that path
//   Nothing else: every /api route needs a token.
// - No defaultAuthorizationPolicy: any client application may ask for a token; Entra issues one only to
//   principals assigned an app role (appRoleAssignmentRequired, deploy.sh), and the app checks the role.
//
// Written after the app settings (one site configuration change at a time).

param appName string

@description('Application (client) id of the API app registration.')
param clientId string

@description('Application id URI of the API (api://<client id> unless the registration says otherwise).')
param appIdUri string

@description('Tenant that issues the tokens.')
param tenantId string

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: appName
}

// checkov reads every Microsoft.Web/sites/config as the "web" config; this one is the V2
// authentication settings. CKV_AZURE_56 (the V2 authentication check) runs on it and passes.
resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: the check reads only the V1 shape (a config named *authsettings* with properties.enabled); this is authsettingsV2, whose switch is properties.platform.enabled (true here, checked by CKV_AZURE_56 and check_infra.py). V1 cannot express excluded paths or Return401, and a bogus properties.enabled is not added to please the scanner
  // checkov:skip=CKV_AZURE_63: not an authentication property; Flex Consumption has no App Service HTTP logs: requests go to Application Insights
  // checkov:skip=CKV_AZURE_65: not an authentication property; errors never leave the app in detail (JSON error bodies) and are logged to Application Insights
  // checkov:skip=CKV_AZURE_66: not an authentication property; failed-request tracing is an IIS feature, Flex Consumption (Linux) traces to Application Insights
  // checkov:skip=CKV_AZURE_222: not an authentication property; public access of the site is decided (and skipped with its reason) in functionapp.bicep
  // checkov:skip=CKV_AZURE_80: not an authentication property; the app is Python 3.13 (functionAppConfig.runtime), no .NET Framework
  // checkov:skip=CKV_AZURE_88: not an authentication property; Flex Consumption has no content share and mounts no Azure Files
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/api/health'
        '/runtime/webhooks/blobs'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            appIdUri
            clientId
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

output name string = auth.name
