package client

import wardv1 "github.com/wardproject/ward/api/ward/v1"

// Maintenance returns the client of the Maintenance service: backups,
// barrier rotation and rekeying of the unseal shares (docs/backup.md).
func (c *Client) Maintenance() wardv1.MaintenanceClient { return wardv1.NewMaintenanceClient(c.conn) }
