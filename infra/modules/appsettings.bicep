// The function app's application settings, written as one "appsettings" config resource
// (it replaces the whole set, so the template is the single source of truth for them).
// The object is a secure parameter: its values (the App Insights connection string among them)
// do not appear in the deployment history. It holds no password and no database secret: the app
// reaches PostgreSQL with its managed identity (DATABASE_AUTH=entra).

param appName string

@secure()
param settings object

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: appName
}

// checkov reads every Microsoft.Web/sites/config as the "web" config; this one is "appsettings", a
// name/value map, so the web-config checks below have nothing to inspect here. Each reason says
// where the concern is handled instead.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_63: not an appsettings property; Flex Consumption has no App Service HTTP logs: requests go to Application Insights
  // checkov:skip=CKV_AZURE_65: not an appsettings property; errors never leave the app in detail (JSON error bodies) and are logged to Application Insights
  // checkov:skip=CKV_AZURE_66: not an appsettings property; failed-request tracing is an IIS feature, Flex Consumption (Linux) traces to Application Insights
  // checkov:skip=CKV_AZURE_222: not an appsettings property; public access of the site is decided (and skipped with its reason) in functionapp.bicep
  // checkov:skip=CKV_AZURE_80: not an appsettings property; the app is Python 3.13 (functionAppConfig.runtime), no .NET Framework
  // checkov:skip=CKV_AZURE_13: not an authentication resource (the check fails every sites/config not named *authsettings*); App Service Authentication is the authsettingsV2 resource in easyauth.bicep (CKV_AZURE_56 passes there)
  // checkov:skip=CKV_AZURE_88: not an appsettings property; Flex Consumption has no content share and mounts no Azure Files
  parent: site
  name: 'appsettings'
  properties: settings
}
