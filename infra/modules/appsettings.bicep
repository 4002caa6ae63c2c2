// The function app's application settings, written as one "appsettings" config resource
// (it replaces the whole set, so the template is the single source of truth for them).
// The object is a secure parameter: its values (App Insights connection string, Key Vault
// reference) do not appear in the deployment history.

param appName string

@secure()
param settings object

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: appName
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: settings
}
