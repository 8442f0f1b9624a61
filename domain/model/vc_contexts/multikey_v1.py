"""The JSON-LD context https://w3id.org/security/multikey/v1 (data, not code).

Source: digitalbazaar/multikey-context contexts/multikey-v1.jsonld at 14c2571270b547deb07b52a63fbde445c7fd56cc.
"""

URL = "https://w3id.org/security/multikey/v1"

# fmt: off
DOCUMENT = {'@context': {'id': '@id',
              'type': '@type',
              '@protected': True,
              'Multikey': {'@id': 'https://w3id.org/security#Multikey',
                           '@context': {'@protected': True,
                                        'id': '@id',
                                        'type': '@type',
                                        'controller': {'@id': 'https://w3id.org/security#controller',
                                                       '@type': '@id'},
                                        'expires': {'@id': 'https://w3id.org/security#expires',
                                                    '@type': 'http://www.w3.org/2001/XMLSchema#dateTime'},
                                        'revoked': {'@id': 'https://w3id.org/security#revoked',
                                                    '@type': 'http://www.w3.org/2001/XMLSchema#dateTime'},
                                        'publicKeyMultibase': {'@id': 'https://w3id.org/security#publicKeyMultibase',
                                                               '@type': 'https://w3id.org/security#multibase'},
                                        'secretKeyMultibase': {'@id': 'https://w3id.org/security#secretKeyMultibase',
                                                               '@type': 'https://w3id.org/security#multibase'}}}}}
