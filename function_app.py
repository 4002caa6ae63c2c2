"""The Azure Functions app (Python v2 programming model).

Functions are declared here and nothing heavy happens at import: each body reads its
binding, makes one call into ``shared``, and maps errors. Built out in the function-app issue.
"""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
