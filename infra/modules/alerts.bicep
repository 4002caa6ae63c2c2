// Alerts on what the app and the platform report (docs/OPERATIONS.md, docs/RELIABILITY.md):
//
//   log alerts (scheduledQueryRules on Application Insights, classic tables traces/customMetrics/requests)
//     upload failures      ERROR "(file <id>) failed[ permanently]", the poison queue, and
//                          blobseal_operations_total{operation=encrypt, outcome!=ok} /
//                          blobseal_failed_uploads (customMetrics)
//     integrity failures   ERROR "integrity check failed for file", blobseal_integrity_failures_total
//     keys missing         ERROR "key ... is recorded but missing from the vault", blobseal_keys_missing_total
//     key integrity        ERROR "key integrity: refused ...", blobseal_key_integrity_failures_total (a key row
//                          the service cannot prove it made: someone wrote the database)
//     access log failures  ERROR "access log write failed ...", blobseal_audit_failures_total (an access that
//                          could not be recorded: refused with AUDIT_FAIL_OPEN=false, served unrecorded with true)
//     rotation failures    ERROR "rotation of file ... failed", blobseal_errors_total{operation=rotate}
//     plaintext too old    blobseal_ingest_oldest_plaintext_seconds, or the reconciler's run log
//                          ("reconcile run ...: {... 'oldest_plaintext_seconds': N ...}") above the threshold
//     function errors      failed function executions (requests with success == false, HTTP 4xx excluded)
//   metric alerts
//     Key Vault throttling ServiceApiResult with StatusCode 429 on the vault
//     Event Grid           DeadLetteredCount / DroppedEventCount of the system topic (an upload whose
//                          event was lost: the reconciler still ingests it within minutes)
//
// The counters reach customMetrics through azure-monitor-opentelemetry (shared/telemetry.py mirrors
// every blobseal_* Prometheus counter as an observable counter named after its family, delta temporality):
// prometheus_client drops the "_total" suffix from a family's name, so blobseal_audit_failures_total is
// exported as blobseal_audit_failures; each query takes both names (check_infra.py fails on "_total" alone);
// the gauges are not mirrored yet, so each rule also matches the log line, which reaches `traces`
// through the Functions host either way. Every rule fires on the first occurrence in its window.

param namePrefix string
param location string
param tags object = {}

@description('Application Insights component (scope of the log alerts).')
param appInsightsId string

@description('Key Vault (scope of the throttling alert).')
param keyVaultId string

@description('Event Grid system topic of the data account.')
param systemTopicId string

@description('Existing action groups (resource ids) notified by every alert.')
param existingActionGroupIds array = []

@description('E-mail addresses for an action group created here ("" entries not allowed; empty = no group).')
param alertEmailAddresses array = []

@description('PLAINTEXT_ALERT_MINUTES of the app: an upload still plaintext for longer fires the alert.')
@minValue(1)
param plaintextAlertMinutes int = 30

@description('Key Vault 429 answers per 15 minutes above which the throttling alert fires (a few are absorbed by retries).')
@minValue(0)
param keyVaultThrottleThreshold int = 10

@description('Failed function executions per 15 minutes above which the function error alert fires.')
@minValue(0)
param functionErrorThreshold int = 0

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmailAddresses)) {
  name: '${namePrefix}-alerts'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'blobseal'
    enabled: true
    emailReceivers: [
      for (address, i) in alertEmailAddresses: {
        name: 'email-${i}'
        emailAddress: address
        useCommonAlertSchema: true
      }
    ]
  }
}

// Alerts with no action group still fire and show in the portal (Monitor > Alerts).
var actionGroupIds = concat(existingActionGroupIds, empty(alertEmailAddresses) ? [] : [
  actionGroup.id
])

var actions = {
  actionGroups: actionGroupIds
}

var uploadFailuresQuery = '''
union
  (traces | where severityLevel >= 3 and message matches regex @"\(file [^)]*\) failed"),
  (traces | where message has "webjobs-blobtrigger-poison"),
  (customMetrics | where name in ("blobseal_operations", "blobseal_operations_total") and tostring(customDimensions["operation"]) == "encrypt"
      and tostring(customDimensions["outcome"]) != "ok" and value > 0),
  (customMetrics | where name == "blobseal_failed_uploads" and value > 0)
'''

var integrityQuery = '''
union
  (traces | where severityLevel >= 3 and message has "integrity check failed for file"),
  (customMetrics | where name in ("blobseal_integrity_failures", "blobseal_integrity_failures_total") and value > 0)
'''

var keysMissingQuery = '''
union
  (traces | where severityLevel >= 3 and message has "is recorded but missing from the vault"),
  (customMetrics | where name in ("blobseal_keys_missing", "blobseal_keys_missing_total") and value > 0)
'''

var keyIntegrityQuery = '''
union
  (traces | where severityLevel >= 3 and message startswith "key integrity: refused"),
  (customMetrics | where name in ("blobseal_key_integrity_failures", "blobseal_key_integrity_failures_total") and value > 0)
'''

var auditFailuresQuery = '''
union
  (traces | where severityLevel >= 3 and message startswith "access log write failed"),
  (customMetrics | where name in ("blobseal_audit_failures", "blobseal_audit_failures_total") and value > 0)
'''

var rotationQuery = '''
union
  (traces | where severityLevel >= 3 and message matches regex @"rotation of file \S+ failed"),
  (customMetrics | where name in ("blobseal_errors", "blobseal_errors_total") and tostring(customDimensions["operation"]) == "rotate" and value > 0)
'''

var plaintextQueryTemplate = '''
union
  (customMetrics | where name == "blobseal_ingest_oldest_plaintext_seconds" | project timestamp, age = value),
  (traces | where message startswith "reconcile run"
      | project timestamp, age = todouble(extract(@"'oldest_plaintext_seconds': ([0-9.]+)", 1, message)))
| where age > THRESHOLD_SECONDS
'''

var functionErrorsQuery = '''
requests
| where success == false and not(resultCode startswith "4")
'''

var logAlerts = [
  {
    name: 'upload-failures'
    displayName: 'blobseal: uploads failing or poisoned'
    description: 'An upload failed (retried by the reconciler) or failed permanently, or went to the poison queue. `python -m shared.cli failed` lists them with the reason; `replay` after fixing the cause.'
    severity: 2
    query: uploadFailuresQuery
    threshold: 0
  }
  {
    name: 'integrity-failures'
    displayName: 'blobseal: integrity check failed'
    description: 'A stored file failed authentication (tampered, truncated, wrong key): nothing unverified was served. Inspect the protected blob named in the log.'
    severity: 1
    query: integrityQuery
    threshold: 0
  }
  {
    name: 'key-integrity'
    displayName: 'blobseal: a key row was refused as not the service\'s own'
    description: 'A key row the service cannot prove it made (an unsigned or forged intermediate key, a key moved to another row, a custody the deployment does not allow) was refused: someone with write access to the database changed it. Nothing was served with it. docs/THREATS.md and docs/OPERATIONS.md ("Key integrity") say what to check.'
    severity: 0
    query: keyIntegrityQuery
    threshold: 0
  }
  {
    name: 'access-log-failures'
    displayName: 'blobseal: the access log could not be written'
    description: 'An access could not be recorded in the access log (blobseal_audit_failures_total): with AUDIT_FAIL_OPEN=false (the default) it was refused with 503, with true it was served unrecorded. The database, the access log\'s append-only rules or the chain key in the vault failed, or someone changed them. The log line names the operation, file and caller; `blobseal audit verify` names the first row that does not verify.'
    severity: 0
    query: auditFailuresQuery
    threshold: 0
  }
  {
    name: 'keys-missing'
    displayName: 'blobseal: a recorded key is missing from Key Vault'
    description: 'A file key the database records is not in the vault: restore the secret version (soft delete / backup) before its files can be read.'
    severity: 1
    query: keysMissingQuery
    threshold: 0
  }
  {
    name: 'rotation-failures'
    displayName: 'blobseal: key rotation failing'
    description: 'Rotation of a file failed (it backs off and is retried, at most hourly). See file_keys.rotation_last_error.'
    severity: 2
    query: rotationQuery
    threshold: 0
  }
  {
    name: 'plaintext-too-old'
    displayName: 'blobseal: plaintext waiting in ingest too long'
    description: 'An upload has stayed plaintext in ingest for longer than PLAINTEXT_ALERT_MINUTES (health reports degraded).'
    severity: 2
    query: replace(plaintextQueryTemplate, 'THRESHOLD_SECONDS', string(plaintextAlertMinutes * 60))
    threshold: 0
  }
  {
    name: 'function-errors'
    displayName: 'blobseal: function executions failing'
    description: 'Function executions failed (HTTP 5xx, trigger or timer errors). Application Insights failures view has the exceptions.'
    severity: 2
    query: functionErrorsQuery
    threshold: functionErrorThreshold
  }
]

resource logAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for alert in logAlerts: {
    name: '${namePrefix}-${alert.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: alert.displayName
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [
        appInsightsId
      ]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT15M'
      criteria: {
        allOf: [
          {
            query: alert.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: alert.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: true
      actions: actions
    }
  }
]

var metricAlerts = [
  {
    name: 'keyvault-throttled'
    description: 'Key Vault answered 429 (throttled) more than the threshold in 15 minutes: ingest slows down (retries with Retry-After). Sustained: shard vaults or envelope keys (docs/VAULT_AZURE.md).'
    severity: 3
    scope: keyVaultId
    namespace: 'Microsoft.KeyVault/vaults'
    metric: 'ServiceApiResult'
    threshold: keyVaultThrottleThreshold
    dimensions: [
      {
        name: 'StatusCode'
        operator: 'Include'
        values: [
          '429'
        ]
      }
    ]
  }
  {
    name: 'events-dead-lettered'
    description: 'Event Grid dead-lettered BlobCreated events (container eventgrid-deadletter of the host account). The reconciler still ingests the uploads; find out why delivery failed.'
    severity: 2
    scope: systemTopicId
    namespace: 'Microsoft.EventGrid/systemTopics'
    metric: 'DeadLetteredCount'
    threshold: 0
    dimensions: []
  }
  {
    name: 'events-dropped'
    description: 'Event Grid dropped BlobCreated events (dead-lettering failed too). The reconciler still ingests the uploads; check the dead-letter container and the topic identity.'
    severity: 2
    scope: systemTopicId
    namespace: 'Microsoft.EventGrid/systemTopics'
    metric: 'DroppedEventCount'
    threshold: 0
    dimensions: []
  }
]

resource metricAlertRules 'Microsoft.Insights/metricAlerts@2018-03-01' = [
  for alert in metricAlerts: {
    name: '${namePrefix}-${alert.name}'
    location: 'global'
    tags: tags
    properties: {
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [
        alert.scope
      ]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT15M'
      criteria: {
        'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
        allOf: [
          {
            criterionType: 'StaticThresholdCriterion'
            name: alert.metric
            metricNamespace: alert.namespace
            metricName: alert.metric
            dimensions: alert.dimensions
            operator: 'GreaterThan'
            threshold: alert.threshold
            timeAggregation: 'Total'
          }
        ]
      }
      autoMitigate: true
      actions: [
        for groupId in actionGroupIds: {
          actionGroupId: groupId
        }
      ]
    }
  }
]

output actionGroupIds array = actionGroupIds
output logAlertNames array = [for (alert, i) in logAlerts: logAlertRules[i].name]
output metricAlertNames array = [for (alert, i) in metricAlerts: metricAlertRules[i].name]
