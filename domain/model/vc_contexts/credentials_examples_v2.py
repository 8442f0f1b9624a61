"""The JSON-LD context https://www.w3.org/ns/credentials/examples/v2 (data, not code).

Source: w3c/vc-data-model contexts/credentials/examples/v2 at 647f43b3242787f43dfad8ab256dcd47af155df3.
"""

URL = "https://www.w3.org/ns/credentials/examples/v2"

# fmt: off
DOCUMENT = {'@context': {'@vocab': 'https://www.w3.org/ns/credentials/examples#'}}
